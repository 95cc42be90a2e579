"""Signed checkpoints kept outside OUTPUT, so that a rollback of OUTPUT itself can be detected.

Everything under OUTPUT can be replaced by whoever can write there, the signed manifests included: an
older manifest copied back over the current one, with the newer shards deleted, is a complete and
correctly signed output of an earlier run. Only something kept apart can tell. After each manifest a
run writes a small signed checkpoint to ``audit.anchor`` (a folder path or URI the operator keeps
apart from OUTPUT, ideally write-once: a bucket with object lock):

    <anchor>/<chain_id>-<sequence:06d>.json
    {"format": "raypipe.checkpoint/1", "chain_id", "sequence", "manifest_digest", "merkle_root",
     "samples", "released", "counts", "shards", "inputs": {shard: {"uri", "size", "etag"|"mtime_ns",
     "sha256"}}, "created", "signature"}

Checkpoints are created exclusively (never replaced). ``raypipe audit verify OUTPUT --anchor A`` takes
a checkpoint file or the anchor folder (its newest checkpoint for OUTPUT's chain) and fails when OUTPUT
is older than the checkpoint (rollback, truncation), differs from it at the same sequence, does not
descend from it, or when an input it pins is missing or changed.
"""

from __future__ import annotations

import re
from typing import Any

from raypipe.audit.manifest import ManifestError, manifest_bytes, manifest_digest, parse_json, signed_payload
from raypipe.audit.signing import Key, canonical, sign
from raypipe.io.publish import create_exclusive, exists, read_bytes
from raypipe.io.storage import StorageOptions, filesystem, join, redact
from raypipe.logs import get_logger

log = get_logger(__name__)

FORMAT = "raypipe.checkpoint/1"
_NAME = re.compile(r"^(?P<chain>[0-9a-f]{32})-(?P<sequence>\d{6,})\.json$")


def checkpoint_name(chain_id: str, sequence: int) -> str:
    return f"{chain_id}-{sequence:06d}.json"


def make_checkpoint(manifest: dict[str, Any]) -> dict[str, Any]:
    """The (unsigned) checkpoint of a signed manifest."""
    shards = manifest["shards"]
    return {
        "format": FORMAT,
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


def write_checkpoint(anchor: str, manifest: dict[str, Any], key: Key, options: StorageOptions) -> str:
    """Sign and create the checkpoint of ``manifest`` under ``anchor``; returns its URI.

    Raises :class:`ManifestError` when the anchor already holds a *different* checkpoint of the same
    sequence for this output: its history was rewritten (a rollback followed by a new run).
    """
    body = make_checkpoint(manifest)
    signed = {**body, "signature": sign(canonical(body), key)}
    uri = join(anchor, checkpoint_name(body["chain_id"], body["sequence"]))
    fs, path = filesystem(uri, options)
    if not create_exclusive(fs, path, manifest_bytes(signed)):
        existing = parse_json(read_bytes(fs, path), redact(uri))
        if existing.get("manifest_digest") != body["manifest_digest"]:
            raise ManifestError(
                f"{redact(uri)}: the anchor already holds another checkpoint {body['sequence']} of this output; "
                "OUTPUT's history was rewritten (rolled back and run again)"
            )
    log.info("checkpoint %d written to %s", body["sequence"], redact(uri))
    return uri


def latest_checkpoint(anchor: str, chain_id: str, options: StorageOptions) -> str | None:
    """URI of the newest checkpoint of ``chain_id`` under the anchor folder, or None."""
    fs, folder = filesystem(anchor, options)
    if not exists(fs, folder):
        return None
    best: tuple[int, str] | None = None
    for path in fs.ls(folder, detail=False):
        match = _NAME.match(path.rstrip("/").rsplit("/", 1)[-1])
        if match and match["chain"] == chain_id:
            number = int(match["sequence"])
            if best is None or number > best[0]:
                best = (number, path.rstrip("/").rsplit("/", 1)[-1])
    return join(anchor, best[1]) if best else None


def read_checkpoint(uri: str, options: StorageOptions) -> dict[str, Any]:
    """A checkpoint's content, unverified; ``ValueError`` when it is not one."""
    fs, path = filesystem(uri, options)
    value = parse_json(read_bytes(fs, path), redact(uri))
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise ValueError(f"{redact(uri)}: not a {FORMAT} checkpoint")
    for name, kind in (("sequence", int), ("chain_id", str), ("manifest_digest", str), ("inputs", dict)):
        if not isinstance(value.get(name), kind):
            raise ValueError(f"{redact(uri)}: malformed checkpoint ({name})")
    return value


def checkpoint_payload(checkpoint: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return signed_payload(checkpoint)
