"""``audit verify`` / ``audit report`` through a throwaway parser: output and exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from raypipe.audit.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, add_audit_commands
from raypipe.audit.signing import KEY_ENV, Key

from .conftest import HMAC_SECRET, SignedOutput


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raypipe")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_verify_ok_then_problems(
    signed_output: SignedOutput,
    hmac_key: Key,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = signed_output(hmac_key)
    monkeypatch.setenv(KEY_ENV, HMAC_SECRET.decode())
    assert run(["audit", "verify", layout.root]) == EXIT_OK
    assert capsys.readouterr().out.startswith("OK ")
    Path(layout.root, "data-00001.tar").unlink()
    assert run(["audit", "verify", layout.root]) == EXIT_PROBLEMS
    out = capsys.readouterr().out
    assert out.startswith("FAILED") and "missing: data-00001.tar: shard tar is gone" in out


def test_verify_with_a_public_key_file(
    tmp_path: Path,
    signed_output: SignedOutput,
    ed25519_key: Key,
    ed25519_pems: tuple[bytes, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "an unrelated secret that is long enough")  # the file wins
    layout = signed_output(ed25519_key)
    public = tmp_path / "audit.pub"
    public.write_bytes(ed25519_pems[1])
    assert run(["audit", "verify", layout.root, "--key-file", str(public)]) == EXIT_OK


def test_verify_without_a_key_is_a_usage_error(
    signed_output: SignedOutput,
    hmac_key: Key,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = signed_output(hmac_key)
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert run(["audit", "verify", layout.root]) == EXIT_USAGE
    assert KEY_ENV in capsys.readouterr().err


def test_report_writes_html(
    tmp_path: Path, signed_output: SignedOutput, hmac_key: Key, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = signed_output(hmac_key)
    target = tmp_path / "r.html"
    assert run(["audit", "report", layout.root, "--out", str(target)]) == EXIT_OK
    assert target.is_file() and capsys.readouterr().out.strip() == str(target)
