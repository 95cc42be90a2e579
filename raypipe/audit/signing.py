"""Signing keys for the run manifest: HMAC-SHA256 secrets or Ed25519 keys, and canonical JSON.

The key comes from ``--key-file`` / ``audit.key_file`` or the environment variable ``RAYPIPE_AUDIT_KEY``
(the file wins). The variable holds either the key itself or, when its value is a path (it starts with
``/``, ``~/``, ``./`` or ``../`` and holds no whitespace or ``=``), the path of a key file, read like
``--key-file``. A key file or the variable holds one of:

- a PEM Ed25519 private key (``-----BEGIN PRIVATE KEY-----``): signs and verifies;
- a PEM Ed25519 public key (``-----BEGIN PUBLIC KEY-----``): verifies only, so a compliance officer
  can check a run without being able to sign one;
- anything else: a raw HMAC-SHA256 secret of at least 16 bytes that does not look guessable (see
  :func:`hmac_strength`; surrounding whitespace, such as the trailing newline of a file, is ignored).
  Whoever verifies needs the same secret.

A key file that holds a secret (HMAC or private key) and that group or others may access is used, with
a warning: anyone who can read it can sign manifests.

Key material stays in memory: a :class:`Key` hides it from ``repr``, and what goes into a manifest is
only the algorithm, a short key id (a hash that names the key without revealing it) and the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from raypipe.config import ConfigError
from raypipe.logs import get_logger

log = get_logger(__name__)

KEY_ENV = "RAYPIPE_AUDIT_KEY"
HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"
ALGORITHMS = (HMAC_SHA256, ED25519)
MIN_HMAC_BYTES = 16  # a shorter shared secret could be guessed offline from any signed manifest
# Anyone holding a signed manifest can test guesses of an HMAC secret offline, so a long but repetitive
# one ("aaaaaaaaaaaaaaaa") is as bad as a short one. The estimate (length x Shannon entropy of the byte
# frequencies) can never exceed 64 bits for a 16-byte secret, so 56 lets 16 random bytes through even
# with a few repeated values, while `openssl rand -hex 32` scores about 250.
MIN_HMAC_BITS = 56
MIN_HMAC_DISTINCT = 8
MAKE_SECRET = "make one with `openssl rand -hex 32`"
# A value of RAYPIPE_AUDIT_KEY that is a path: hex and PEM never start like this, base64 of 32 bytes ends in "=".
_PATH_LIKE = re.compile(r"^(?:/|~/|\./|\.\./)[^\s=]*$")
KEY_ID_CHARS = 16  # 64 bits: enough to tell keys apart, far too little to say anything about them
_HMAC_KEY_ID_DOMAIN = b"raypipe audit hmac key id\x00"  # the id is never the plain hash of the secret
_DERIVE_DOMAIN = b"raypipe derived key\x00"


class AuditKeyError(ConfigError):
    """No usable signing key: none configured, unreadable, or of an unsupported kind."""


@dataclass(frozen=True)
class Key:
    """A signing or verification key. ``algorithm`` and ``key_id`` are public; the rest is not."""

    algorithm: str
    key_id: str
    source: str  # where it came from ("environment variable RAYPIPE_AUDIT_KEY", "file /path"), for messages
    _secret: bytes | None = field(default=None, repr=False)  # HMAC secret
    _private: Any = field(default=None, repr=False)  # Ed25519PrivateKey
    _public: Any = field(default=None, repr=False)  # Ed25519PublicKey

    @property
    def can_sign(self) -> bool:
        """False for an Ed25519 public key (verification only)."""
        return self.algorithm == HMAC_SHA256 or self._private is not None

    def derive(self, purpose: str) -> bytes:
        """A secret for one purpose, derived from the signing key (HMAC-SHA256 of the key material over the
        purpose): it authenticates a run's own intermediate files without handing the signing key out."""
        if self._secret is not None:
            material = self._secret
        elif self._private is not None:
            material = self.secret_forms()[0]
        else:
            raise AuditKeyError(f"the key from {self.source} is an Ed25519 public key: it cannot derive secrets")
        return hmac.new(material, _DERIVE_DOMAIN + purpose.encode(), hashlib.sha256).digest()

    def secret_forms(self) -> list[bytes]:
        """Encodings of the secret part of the key, to make sure none of them ends up in an output."""
        if self._secret is not None:
            return [self._secret, self._secret.hex().encode()]
        if self._private is not None:
            from cryptography.hazmat.primitives import serialization

            raw = self._private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            return [raw, raw.hex().encode()]
        return []


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj``: sorted keys, no whitespace, UTF-8, no NaN or infinity.

    Signatures and chain hashes are computed over these bytes, so a manifest may be stored pretty-printed
    and still verify. Raises ``ValueError`` for values JSON cannot represent exactly (NaN, infinity).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def parse_key(material: bytes, source: str) -> Key:
    """A :class:`Key` from the bytes of a key file or of the environment variable (see the module doc)."""
    data = material.strip()
    if not data:
        raise AuditKeyError(f"the audit key from {source} is empty")
    if data.startswith(b"-----BEGIN"):
        return _parse_pem(data, source)
    if len(data) < MIN_HMAC_BYTES:
        raise AuditKeyError(
            f"the HMAC secret from {source} has {len(data)} bytes; use at least {MIN_HMAC_BYTES} ({MAKE_SECRET})"
        )
    bits, distinct = hmac_strength(data)
    if bits < MIN_HMAC_BITS or distinct < MIN_HMAC_DISTINCT:
        # The message gives the estimate, never the secret.
        raise AuditKeyError(
            f"the HMAC secret from {source} is too easy to guess: {distinct} distinct byte values, about "
            f"{bits:.0f} bits by a byte-frequency estimate (at least {MIN_HMAC_DISTINCT} distinct values and "
            f"{MIN_HMAC_BITS} bits are required); {MAKE_SECRET}"
        )
    key_id = hashlib.sha256(_HMAC_KEY_ID_DOMAIN + data).hexdigest()[:KEY_ID_CHARS]
    return Key(HMAC_SHA256, key_id, source, _secret=data)


def hmac_strength(secret: bytes) -> tuple[float, int]:
    """(estimated bits, distinct byte values) of an HMAC secret: length x Shannon entropy per byte.

    A rough upper bound on what a guesser faces: it catches repetition and tiny alphabets, not a
    dictionary word padded to length, so a secret should come from a random generator.
    """
    counts = Counter(secret)
    total = len(secret)
    per_byte = -sum(n / total * math.log2(n / total) for n in counts.values()) if total else 0.0
    return total * per_byte, len(counts)


def _parse_pem(data: bytes, source: str) -> Key:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if b"PRIVATE KEY" in data.split(b"\n", 1)[0]:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError) as exc:
            # TypeError: the key is encrypted. The message never quotes the key.
            raise AuditKeyError(
                f"the PEM private key from {source} cannot be loaded ({type(exc).__name__}); "
                "an unencrypted PKCS#8 Ed25519 key is expected (`openssl genpkey -algorithm ed25519`)"
            ) from None
        if not isinstance(private, Ed25519PrivateKey):
            raise AuditKeyError(f"the private key from {source} is not an Ed25519 key")
        public = private.public_key()
        return Key(ED25519, _ed25519_key_id(public), source, _private=private, _public=public)
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError:
        raise AuditKeyError(f"the PEM data from {source} is neither an Ed25519 private nor public key") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise AuditKeyError(f"the public key from {source} is not an Ed25519 key")
    return Key(ED25519, _ed25519_key_id(loaded), source, _public=loaded)


def _ed25519_key_id(public: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_CHARS]


def load_key(key_file: str | None = None, environ: dict[str, str] | None = None) -> Key:
    """The audit key from ``key_file`` if given, else from ``RAYPIPE_AUDIT_KEY`` (the key, or a path to it).

    Raises :class:`AuditKeyError` when neither is set or the key cannot be used.
    """
    if key_file is not None:
        path = Path(key_file).expanduser()
        key = _read_key_file(path, f"file {path}")
    else:
        env = os.environ if environ is None else environ
        value = env.get(KEY_ENV)
        if not value:
            raise AuditKeyError(
                f"no audit key: pass --key-file FILE or set {KEY_ENV} "
                "(an HMAC secret of at least 16 bytes, an Ed25519 PEM key, or the path of a key file)"
            )
        if _PATH_LIKE.match(value.strip()):
            path = Path(value.strip()).expanduser().absolute()  # messages name the file that was read
            key = _read_key_file(path, f"file {path} (named by {KEY_ENV})", named_by_env=True)
        else:
            key = parse_key(value.encode("utf-8"), f"environment variable {KEY_ENV}")
    log.debug("audit key %s (%s) from %s", key.key_id, key.algorithm, key.source)
    return key


def _read_key_file(path: Path, source: str, named_by_env: bool = False) -> Key:
    try:
        material = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        if named_by_env:
            # The value may be a mistyped secret rather than a path: the message does not repeat it.
            raise AuditKeyError(
                f"{KEY_ENV} looks like a file path (it starts with /, ~/, ./ or ../), but that file cannot be read "
                f"({exc.strerror or type(exc).__name__}); give the path of a readable key file, or a secret "
                f"that does not look like a path ({MAKE_SECRET})"
            ) from None
        raise AuditKeyError(f"cannot read the audit key file {path}: {exc.strerror or exc}") from None
    key = parse_key(material, source)
    if key.can_sign and mode & 0o077:
        # A public key may be world-readable; a signing secret lets whoever reads it sign manifests.
        log.warning(
            "audit key file %s is accessible to group or others (mode %04o): anyone who can read it can sign "
            "manifests; restrict it with `chmod 600 %s`",
            path,
            stat.S_IMODE(mode),
            path,
        )
    return key


def mac(secret: bytes, *parts: bytes) -> str:
    """HMAC-SHA256 (hex) over length-prefixed ``parts`` (unambiguous: no two part lists share an input)."""
    return _mac_of(secret, parts).hexdigest()


def mac_file(secret: bytes, parts: Sequence[bytes], handle: IO[bytes], size: int) -> str:
    """``mac(secret, *parts, data)`` where ``data`` is the ``size`` bytes read from ``handle``, read in
    chunks (a file of any size, never held in memory)."""
    tag = _mac_of(secret, parts)
    tag.update(size.to_bytes(8, "big"))
    left = size
    while left:
        chunk = handle.read(min(left, 8 * 2**20))
        if not chunk:
            raise ValueError(f"the file ended {left} bytes early")
        tag.update(chunk)
        left -= len(chunk)
    return tag.hexdigest()


def _mac_of(secret: bytes, parts: Sequence[bytes]) -> hmac.HMAC:
    tag = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        tag.update(len(part).to_bytes(8, "big"))
        tag.update(part)
    return tag


def sign(payload: bytes, key: Key) -> dict[str, str]:
    """``{"algorithm", "key_id", "signature" (hex)}`` over ``payload``. Needs a key that can sign."""
    if key.algorithm == HMAC_SHA256:
        assert key._secret is not None
        value = hmac.new(key._secret, payload, hashlib.sha256).hexdigest()
    elif key._private is not None:
        value = key._private.sign(payload).hex()
    else:
        raise AuditKeyError(f"the key from {key.source} is an Ed25519 public key: it can verify, not sign")
    return {"algorithm": key.algorithm, "key_id": key.key_id, "signature": value}


def verify(payload: bytes, signature: dict[str, Any] | None, key: Key) -> bool:
    """True when ``signature`` (as made by :func:`sign`) is valid for ``payload`` under ``key``."""
    if not isinstance(signature, dict) or signature.get("algorithm") != key.algorithm:
        return False
    if signature.get("key_id") != key.key_id:
        return False
    value = signature.get("signature")
    if not isinstance(value, str):
        return False
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return False
    if key.algorithm == HMAC_SHA256:
        assert key._secret is not None
        return hmac.compare_digest(raw, hmac.new(key._secret, payload, hashlib.sha256).digest())
    from cryptography.exceptions import InvalidSignature

    try:
        key._public.verify(raw, payload)
    except InvalidSignature:
        return False
    return True


def describe_mismatch(signature: dict[str, Any] | None, key: Key) -> str:
    """Why a signature does not verify, in words that name keys by id only."""
    if not isinstance(signature, dict):
        return "the manifest carries no signature"
    algorithm, key_id = signature.get("algorithm"), signature.get("key_id")
    if algorithm != key.algorithm:
        return f"signed with {algorithm} key {key_id}, but the given key is {key.algorithm} key {key.key_id}"
    if key_id != key.key_id:
        return f"signed with key {key_id}, but the given key is {key.key_id} (wrong key)"
    return "the signature does not match the manifest's content (the manifest was changed)"
