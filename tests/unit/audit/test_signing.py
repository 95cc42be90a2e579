"""Signing keys: HMAC and Ed25519 round trips, wrong keys fail, keys never leak into outputs or logs."""

from __future__ import annotations

import base64
import logging
import os
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raypipe.audit.signing import (
    ED25519,
    HMAC_SHA256,
    KEY_ENV,
    AuditKeyError,
    Key,
    canonical,
    hmac_strength,
    load_key,
    parse_key,
    sign,
    verify,
)

from .conftest import HMAC_SECRET, SignedOutput

PAYLOAD = canonical({"b": 1, "a": [1.5, None, "é"]})


def test_canonical_json_is_sorted_compact_utf8_and_refuses_nan() -> None:
    assert canonical({"b": 1, "a": [1.5, None, "é"]}) == '{"a":[1.5,null,"é"],"b":1}'.encode()
    assert canonical({"b": {"y": 1, "x": 2}}) == b'{"b":{"x":2,"y":1}}'
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


def test_hmac_round_trip_and_failures(hmac_key: Key) -> None:
    signature = sign(PAYLOAD, hmac_key)
    assert signature["algorithm"] == HMAC_SHA256 and len(signature["key_id"]) == 16
    assert verify(PAYLOAD, signature, hmac_key)
    assert not verify(PAYLOAD + b" ", signature, hmac_key)
    other = parse_key(b"another secret of enough length", "other")
    assert other.key_id != hmac_key.key_id
    assert not verify(PAYLOAD, signature, other)
    forged = {**signature, "key_id": other.key_id}  # a matching id does not make a signature valid
    assert not verify(PAYLOAD, forged, other)
    assert not verify(PAYLOAD, {**signature, "signature": "zz"}, hmac_key)
    assert not verify(PAYLOAD, None, hmac_key)  # type: ignore[arg-type]


def test_ed25519_round_trip_public_key_verifies_only(ed25519_pems: tuple[bytes, bytes]) -> None:
    private = parse_key(ed25519_pems[0], "private")
    public = parse_key(ed25519_pems[1], "public")
    assert private.algorithm == public.algorithm == ED25519
    assert private.key_id == public.key_id and private.can_sign and not public.can_sign
    signature = sign(PAYLOAD, private)
    assert verify(PAYLOAD, signature, private) and verify(PAYLOAD, signature, public)
    assert not verify(PAYLOAD.replace(b"1", b"2"), signature, public)
    with pytest.raises(AuditKeyError, match="public key"):
        sign(PAYLOAD, public)
    stranger_pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    stranger = parse_key(stranger_pem, "stranger")
    assert not verify(PAYLOAD, signature, stranger)
    assert not verify(PAYLOAD, {**signature, "key_id": stranger.key_id}, stranger)
    hmac_key = parse_key(HMAC_SECRET, "secret")
    assert not verify(PAYLOAD, signature, hmac_key)  # another algorithm


def test_load_key_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ed25519_pems: tuple[bytes, bytes]
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(AuditKeyError, match=f"--key-file FILE or set {KEY_ENV}"):
        load_key(None)
    monkeypatch.setenv(KEY_ENV, HMAC_SECRET.decode())
    from_env = load_key(None)
    assert from_env.algorithm == HMAC_SHA256 and from_env.key_id == parse_key(HMAC_SECRET, "x").key_id
    pem = tmp_path / "signing.pem"
    pem.write_bytes(ed25519_pems[0])
    assert load_key(str(pem)).algorithm == ED25519  # the file wins over the environment
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(HMAC_SECRET + b"\n")  # a trailing newline is not part of the secret
    assert load_key(str(secret_file)).key_id == from_env.key_id
    with pytest.raises(AuditKeyError, match="cannot read"):
        load_key(str(tmp_path / "absent"))


@pytest.mark.parametrize(
    ("material", "message"),
    [
        (b"   \n", "empty"),
        (b"too short", "at least 16"),
        (b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n", "neither"),
    ],
)
def test_unusable_keys_are_refused_with_a_clear_message(material: bytes, message: str) -> None:
    with pytest.raises(AuditKeyError, match=message):
        parse_key(material, "test")


def test_encrypted_and_non_ed25519_pem_keys_are_refused() -> None:
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(AuditKeyError, match="unencrypted"):
        parse_key(encrypted, "encrypted")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(AuditKeyError, match="not an Ed25519"):
        parse_key(ec_pem, "ec")


@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_key_material_never_reaches_the_manifest_or_the_logs(
    kind: str,
    signed_output: SignedOutput,
    ed25519_pems: tuple[bytes, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    material = HMAC_SECRET if kind == "hmac" else ed25519_pems[0]
    key = parse_key(material, "test")
    assert HMAC_SECRET.decode() not in repr(key) and "_private" not in repr(key)
    with caplog.at_level(logging.DEBUG, logger="raypipe"):
        layout = signed_output(key)
        from raypipe.audit.verify import verify_output

        assert verify_output(layout.root, key).ok
    written = b"".join(path.read_bytes() for path in Path(layout.root).rglob("*") if path.is_file())
    forms = [material.strip(), *key.secret_forms()]
    if kind == "ed25519":
        forms.append(material.strip().splitlines()[1])  # the base64 body of the PEM
    for form in forms:
        assert form not in written
        assert form.decode("latin-1") not in caplog.text
    assert key.key_id.encode() in Path(layout.state("manifest.json")).read_bytes()


@pytest.mark.parametrize(
    "weak",
    [b"aaaaaaaaaaaaaaaa", b"abababababababababababababababab", b"passwordpassword", b"0000000011111111222222223333"],
)
def test_guessable_hmac_secrets_are_refused_by_entropy_not_only_length(weak: bytes) -> None:
    assert len(weak) >= 16  # long enough for the old length rule
    with pytest.raises(AuditKeyError, match="too easy to guess") as caught:
        parse_key(weak, "test")
    message = str(caught.value)
    assert "openssl rand -hex 32" in message and weak.decode() not in message


def test_random_hmac_secrets_pass_the_strength_check() -> None:
    for _ in range(200):  # `openssl rand -hex 32` prints exactly this; 16 raw random bytes is the minimum
        assert parse_key(secrets.token_hex(32).encode(), "hex").algorithm == HMAC_SHA256
        parse_key(secrets.token_bytes(16).replace(b"-", b"+").strip() + b"\x01\x02\x03", "raw")
    bits, distinct = hmac_strength(secrets.token_hex(32).encode())
    assert bits > 200 and distinct >= 8
    assert hmac_strength(b"aaaaaaaaaaaaaaaa") == (0.0, 1)


def _key_file(path: Path, material: bytes, mode: int) -> Path:
    path.write_bytes(material)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_a_signing_key_file_others_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ed25519_pems: tuple[bytes, bytes], kind: str, mode: int
) -> None:
    material = HMAC_SECRET if kind == "hmac" else ed25519_pems[0]
    path = _key_file(tmp_path / "audit.key", material, mode)
    with caplog.at_level(logging.WARNING, logger="raypipe"):
        assert load_key(str(path)).can_sign
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert str(path) in text and f"{mode:04o}" in text and "chmod 600" in text
    assert HMAC_SECRET.decode() not in caplog.text


def test_private_key_files_and_public_keys_load_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ed25519_pems: tuple[bytes, bytes]
) -> None:
    private = _key_file(tmp_path / "private.key", HMAC_SECRET, 0o600)
    public = _key_file(tmp_path / "public.pem", ed25519_pems[1], 0o644)  # a public key may be world-readable
    with caplog.at_level(logging.WARNING, logger="raypipe"):
        load_key(str(private))
        assert not load_key(str(public)).can_sign
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("spelling", ["absolute", "home", "relative"])
def test_the_environment_variable_may_name_a_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ed25519_pems: tuple[bytes, bytes], spelling: str
) -> None:
    path = _key_file(tmp_path / "signing.pem", ed25519_pems[0], 0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    value = {"absolute": str(path), "home": "~/signing.pem", "relative": "./signing.pem"}[spelling]
    monkeypatch.setenv(KEY_ENV, value + "\n")
    key = load_key(None)
    assert key.algorithm == ED25519 and key.can_sign
    assert key.key_id == parse_key(ed25519_pems[0], "x").key_id  # the file's key, not the path as a secret
    assert str(path) in key.source


def test_a_path_in_the_environment_variable_that_cannot_be_read_is_an_error_that_hides_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "not-mounted" / "audit.key")
    monkeypatch.setenv(KEY_ENV, missing)
    with pytest.raises(AuditKeyError, match=f"{KEY_ENV} looks like a file path") as caught:
        load_key(None)
    assert missing not in str(caught.value)  # it might be a mistyped secret


def test_secrets_that_do_not_look_like_paths_stay_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    base64_secret = "/" + base64.b64encode(secrets.token_bytes(32)).decode()[1:]  # 32 bytes: ends with "="
    for value in (base64_secret, secrets.token_hex(32), "correct horse battery staple 0123456789"):
        monkeypatch.setenv(KEY_ENV, value)
        key = load_key(None)
        assert key.algorithm == HMAC_SHA256 and key.source == f"environment variable {KEY_ENV}"
