"""Signed checkpoints kept outside OUTPUT, so that a rollback of OUTPUT itself can be detected.

Everything under OUTPUT can be replaced by whoever can write there, the signed manifests included: an
older manifest copied back over the current one, with the newer shards deleted, is a complete and
correctly signed output of an earlier run. Only something kept apart can tell. After each manifest a
run writes a small signed checkpoint to ``audit.anchor`` (a folder path or URI the operator keeps
apart from OUTPUT, ideally write-once: a bucket with object lock):

    <anchor>/<chain_id>-<sequence:06d>.json
    {"format": "raypipe.checkpoint/1", "output", "chain_id", "sequence", "manifest_digest", "merkle_root",
     "samples", "released", "counts", "shards", "inputs": {shard: {"uri", "size", "etag"|"mtime_ns",
     "sha256"}}, "created", "signature"}

Checkpoints are created exclusively (never replaced) and name the OUTPUT they belong to (so another
output signed with the same key cannot pass for this one, and a moved OUTPUT must be verified against
its old location's checkpoints by hand). ``raypipe audit verify OUTPUT --anchor A`` takes a checkpoint
file or the anchor folder (its newest *verified* checkpoint for OUTPUT's chain) and fails when OUTPUT
is older than the checkpoint (rollback, truncation), differs from it at the same sequence, does not
descend from it, or when an input it pins is missing or changed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from raypipe.audit.manifest import (
    MAX_MANIFEST_BYTES,
    ManifestError,
    manifest_bytes,
    manifest_digest,
    parse_json,
    signed_payload,
)
from raypipe.audit.signing import Key, canonical, describe_mismatch, sign, verify
from raypipe.io.publish import create_exclusive, exists, is_local, read_bytes
from raypipe.io.storage import StorageOptions, filesystem, join, location, redact
from raypipe.logs import get_logger

log = get_logger(__name__)

FORMAT = "raypipe.checkpoint/1"
_NAME = re.compile(r"^(?P<chain>[0-9a-f]{32})-(?P<sequence>\d{6,})\.json$")


def checkpoint_name(chain_id: str, sequence: int) -> str:
    return f"{chain_id}-{sequence:06d}.json"


def output_location(root: str) -> str:
    """OUTPUT's location as a checkpoint records it (normalised, without credentials)."""
    storage, path = location(root)
    return f"{storage}:{path}"


def make_checkpoint(manifest: dict[str, Any], output: str) -> dict[str, Any]:
    """The (unsigned) checkpoint of a signed manifest of the OUTPUT at ``output``."""
    shards = manifest["shards"]
    return {
        "format": FORMAT,
        "output": output_location(output),
        "chain_id": manifest["chain_id"],
        "sequence": manifest["sequence"],
        "manifest_digest": manifest_digest(manifest),
        "merkle_root": manifest["records"]["merkle_root"],
        "samples": manifest["samples"],
        "released": manifest["released"],
        "counts": manifest["counts"],
        "shards": len(shards),
        "inputs": {name: entry.get("input") for name, entry in sorted(shards.items())},
        "created": manifest["created"],
    }


def write_checkpoint(anchor: str, manifest: dict[str, Any], key: Key, options: StorageOptions, output: str) -> str:
    """Sign and create the checkpoint of ``manifest`` (of the OUTPUT ``output``) under ``anchor``.

    Returns its URI. Raises :class:`ManifestError` when the anchor already holds a *different*
    checkpoint of the same sequence for this output: its history was rewritten (a rollback followed by
    a new run).
    """
    body = make_checkpoint(manifest, output)
    signed = {**body, "signature": sign(canonical(body), key)}
    uri = join(anchor, checkpoint_name(body["chain_id"], body["sequence"]))
    fs, path = filesystem(uri, options)
    if not create_exclusive(fs, path, manifest_bytes(signed)):
        try:
            existing = read_checkpoint(uri, options)
        except ValueError:
            existing = {}
        if existing.get("manifest_digest") != body["manifest_digest"]:
            raise ManifestError(
                f"{redact(uri)}: the anchor already holds another checkpoint {body['sequence']} of this output; "
                "OUTPUT's history was rewritten (rolled back and run again)"
            )
    log.info("checkpoint %d written to %s", body["sequence"], redact(uri))
    return uri


@dataclass
class Checkpoints:
    """The checkpoints of one chain under an anchor folder: the verified ones, and why others are not."""

    valid: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (URI, checkpoint), by sequence
    invalid: list[tuple[str, str, str]] = field(default_factory=list)  # (URI, verify's problem kind, reason)

    @property
    def newest(self) -> tuple[str, dict[str, Any]] | None:
        return self.valid[-1] if self.valid else None


def find_checkpoints(anchor: str, chain_id: str, options: StorageOptions, key: Key) -> Checkpoints:
    """Every checkpoint of ``chain_id`` under the anchor folder, each read and verified.

    The sequence in a file name is never trusted: a checkpoint counts only if its signature verifies
    and its content names the same chain and sequence as its name.
    """
    found = Checkpoints()
    fs, folder = filesystem(anchor, options)
    if not exists(fs, folder):
        return found
    for path in sorted(fs.ls(folder, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        match = _NAME.match(name)
        if not match or match["chain"] != chain_id:
            continue
        uri = join(anchor, name)
        checkpoint, kind, reason = verified_checkpoint(uri, options, key)
        if checkpoint is None:
            found.invalid.append((uri, kind, reason))
        elif checkpoint["chain_id"] != chain_id or checkpoint["sequence"] != int(match["sequence"]):
            found.invalid.append((uri, "modified", "its content names another chain or sequence than its file name"))
        else:
            found.valid.append((uri, checkpoint))
    found.valid.sort(key=lambda item: int(item[1]["sequence"]))
    return found


def latest_checkpoint(anchor: str, chain_id: str, options: StorageOptions, key: Key) -> str | None:
    """URI of the newest verified checkpoint of ``chain_id`` under the anchor folder, or None."""
    newest = find_checkpoints(anchor, chain_id, options, key).newest
    return newest[0] if newest else None


def read_checkpoint(uri: str, options: StorageOptions) -> dict[str, Any]:
    """A checkpoint's content, unverified; ``ValueError`` when it is not one (or not a regular file)."""
    fs, path = filesystem(uri, options)
    info = fs.info(path)
    if info.get("type") != "file" or int(info.get("size") or 0) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{redact(uri)}: not a regular file of at most {MAX_MANIFEST_BYTES} bytes")
    local = fs._strip_protocol(path) if is_local(fs) else None
    if local is not None and (os.path.islink(local) or not os.path.isfile(local)):
        raise ValueError(f"{redact(uri)}: not a regular file")
    value = parse_json(read_bytes(fs, path), redact(uri))
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise ValueError(f"{redact(uri)}: not a {FORMAT} checkpoint")
    for name, kind in (("sequence", int), ("chain_id", str), ("manifest_digest", str), ("inputs", dict)):
        if not isinstance(value.get(name), kind) or isinstance(value.get(name), bool):
            raise ValueError(f"{redact(uri)}: malformed checkpoint ({name})")
    return value


def verified_checkpoint(uri: str, options: StorageOptions, key: Key) -> tuple[dict[str, Any] | None, str, str]:
    """``(checkpoint, "", "")`` when the file reads and its signature verifies under ``key``; else
    ``(None, kind, reason)`` with the problem kind ``verify`` reports."""
    try:
        checkpoint = read_checkpoint(uri, options)
    except (ValueError, OSError) as exc:
        return None, "modified", f"unusable checkpoint ({exc})"
    if not verify(signed_payload(checkpoint), checkpoint.get("signature"), key):
        return None, "bad_signature", describe_mismatch(checkpoint.get("signature"), key)
    return checkpoint, "", ""
