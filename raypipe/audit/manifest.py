"""The signed run manifest: what a run released, in a form a compliance officer can check.

``OUTPUT/_raypipe/manifest.json`` (written last in a run) holds, per finalized shard, the sha256 of its
tar and audit file, its sample counts and the RFC 6962 Merkle root of its audit records; totals per
status; the Merkle root over every audit record of the run (leaves: the canonical JSON of each audit
row, shards in name order, rows in ``seq`` order); the run's parameters, models and weight hashes; and
a signature over all of it. A resumed run writes a new manifest whose ``previous`` is the sha256 of the
manifest it replaces, which is kept as ``_raypipe/manifests/<sequence:06d>.json``: the manifests form a
hash chain, so no earlier run can be rewritten without breaking every later link.

Layout (``format`` = ``raypipe.manifest/1``)::

    {
      "format": "raypipe.manifest/1",
      "sequence": 2,                      # 1 for the first manifest of OUTPUT
      "previous": "<sha256 hex of the previous manifest's canonical JSON, signature included>" | null,
      "created": "2024-05-01T12:00:00Z",
      "run": {"config_hash", "code_version", "models", "weight_hashes", "started", "finished",
              "method", ...},            # as given by the caller; nothing secret
      "shards": {"data-00001.tar": {"tar_sha256", "audit_sha256", "samples", "released",
                                     "counts": {status: n}, "records_root", "config_hash"}, ...},
      "counts": {status: n}, "samples": n, "released": n,
      "records": {"count": n, "merkle_root": "<hex>", "tree": "rfc6962-sha256",
                  "leaf": "canonical JSON of each audit row; shards by name, rows by seq"},
      "signature": {"algorithm": "hmac-sha256" | "ed25519", "key_id": "<16 hex>", "signature": "<hex>"}
    }

The signature covers the canonical JSON (:func:`raypipe.audit.signing.canonical`) of everything but
``signature``; the file itself is pretty-printed for people.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow.parquet as pq

from raypipe.audit.merkle import MerkleBuilder
from raypipe.audit.signing import Key, canonical, sign
from raypipe.io.publish import exists, publish_bytes, read_bytes
from raypipe.layout import OutputLayout
from raypipe.logs import get_logger
from raypipe.records import Status

log = get_logger(__name__)

FORMAT = "raypipe.manifest/1"
MANIFEST_FILE = "manifest.json"
HISTORY_DIR = "manifests"
MERKLE_TREE = "rfc6962-sha256"
LEAF_ENCODING = "canonical JSON of each audit row; shards by name, rows by seq"
RELEASED_STATUSES = frozenset(s.value for s in Status if s.releasable)
_HASH_CHUNK = 8 * 2**20

# Names a caller must not put in ``run``: the manifest is handed to third parties.
_SECRET_NAME = re.compile(r"secret|passw|token|credential|private|api_?key|access_?key|signing_?key", re.I)


class ManifestError(RuntimeError):
    """The output cannot be covered by a manifest as it is (unfinished shard, inconsistent files)."""


# ------------------------------------------------------------------------------------------- helpers


def manifest_path(layout: OutputLayout) -> str:
    return layout.state(MANIFEST_FILE)


def history_path(layout: OutputLayout, sequence: int) -> str:
    return layout.state(f"{HISTORY_DIR}/{sequence:06d}.json")


def signed_payload(manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest's signature covers: its canonical JSON without ``signature``."""
    return canonical({k: v for k, v in manifest.items() if k != "signature"})


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 hex of a manifest's canonical JSON, signature included (the next one's ``previous``)."""
    return hashlib.sha256(canonical(manifest)).hexdigest()


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The stored form: indented, sorted JSON (verification re-canonicalizes, so layout does not matter)."""
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def read_manifest(layout: OutputLayout) -> dict[str, Any] | None:
    """The current manifest of OUTPUT, or None when there is none yet."""
    path = manifest_path(layout)
    if not exists(layout.fs, path):
        return None
    return json.loads(read_bytes(layout.fs, path))


def sha256_file(fs: Any, path: str) -> str:
    """sha256 hex of a file, streamed (shard tars can be far larger than memory)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def audit_rows(data: bytes) -> list[dict[str, Any]]:
    """The rows of an audit parquet, in file order, as plain Python values."""
    return pq.read_table(io.BytesIO(data)).to_pylist()


def _json_safe(value: Any) -> Any:
    # canonical() refuses NaN and infinity (JSON has no exact spelling for them); an audit float that
    # is not finite is still evidence, so it is spelled as a string rather than dropped.
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def record_leaf(row: dict[str, Any]) -> bytes:
    """The Merkle leaf of one audit row: its canonical JSON (every column, nulls included)."""
    return canonical(_json_safe(row))


def records_root(rows: Iterable[dict[str, Any]]) -> str:
    """RFC 6962 root (hex) over the leaves of ``rows`` in the given order."""
    builder = MerkleBuilder()
    for row in rows:
        builder.add(record_leaf(row))
    return builder.root().hex()


def status_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(str(row.get("status")) for row in rows).items()))


def _check_run(run: dict[str, Any], where: str = "run") -> None:
    for name, value in run.items():
        if _SECRET_NAME.search(str(name)):
            raise ManifestError(f"{where}.{name}: looks like a secret; the manifest is shared, leave it out")
        if isinstance(value, dict):
            _check_run(value, f"{where}.{name}")
    canonical(run)  # raises ValueError for values that cannot be signed exactly (NaN, objects)


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------- build


def _shard_entry(layout: OutputLayout, shard: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A shard's manifest entry, recomputed from its files and checked against its completion marker."""
    marker = layout.read_marker(shard)
    if marker is None:
        raise ManifestError(f"{shard}: not finalized (no completion marker); finish the run first")
    fs = layout.fs
    tar_sha = sha256_file(fs, layout.tar(shard))
    audit_data = read_bytes(fs, layout.audit(shard))
    audit_sha = hashlib.sha256(audit_data).hexdigest()
    rows = audit_rows(audit_data)
    seqs = [row["seq"] for row in rows]
    counts = status_counts(rows)
    released = sum(1 for row in rows if row.get("status") in RELEASED_STATUSES)
    recomputed = {
        "tar_sha256": tar_sha,
        "audit_sha256": audit_sha,
        "samples": len(rows),
        "released": released,
        "counts": counts,
    }
    disagree = [name for name, value in recomputed.items() if marker.get(name) != value]
    if disagree:
        raise ManifestError(
            f"{shard}: the files disagree with the completion marker on {', '.join(disagree)}; "
            "the shard changed after it was finalized"
        )
    if seqs != list(range(len(rows))):
        raise ManifestError(f"{shard}: audit records are not the samples 0..{len(rows) - 1} in input order")
    entry = {**recomputed, "records_root": records_root(rows), "config_hash": marker.get("config_hash")}
    return entry, rows


def build_manifest(layout: OutputLayout, shards: list[str], run: dict[str, Any]) -> dict[str, Any]:
    """The (unsigned) manifest over ``shards``, recomputed from the files under OUTPUT.

    ``shards`` are output shard names (``data-00001.tar``); list every finalized shard of the output,
    those of earlier runs included, since the newest manifest is the one ``verify`` checks. ``run``
    carries ``config_hash``, ``code_version``, ``models``, ``weight_hashes``, ``started``, ``finished``,
    the method parameters and anything else worth stating; it must hold nothing secret.
    Raises :class:`ManifestError` for a shard that is not finalized or whose files disagree with its
    completion marker.
    """
    _check_run(run)
    names = sorted(set(shards))
    builder = MerkleBuilder()
    entries: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    for shard in names:
        entry, rows = _shard_entry(layout, shard)
        for row in rows:
            builder.add(record_leaf(row))
        entries[shard] = entry
        totals.update(entry["counts"])
    previous = read_manifest(layout)
    manifest = {
        "format": FORMAT,
        "sequence": int(previous["sequence"]) + 1 if previous else 1,
        "previous": manifest_digest(previous) if previous else None,
        "created": _utc_now(),
        "run": run,
        "shards": entries,
        "counts": dict(sorted(totals.items())),
        "samples": sum(e["samples"] for e in entries.values()),
        "released": sum(e["released"] for e in entries.values()),
        "records": {
            "count": builder.size,
            "merkle_root": builder.root().hex(),
            "tree": MERKLE_TREE,
            "leaf": LEAF_ENCODING,
        },
    }
    log.info(
        "manifest %d over %d shards, %d records, root %s",
        manifest["sequence"],
        len(entries),
        builder.size,
        manifest["records"]["merkle_root"][:16],
    )
    return manifest


# ---------------------------------------------------------------------------------------------- write


def write_manifest(layout: OutputLayout, manifest: dict[str, Any], key: Key) -> dict[str, Any]:
    """Sign ``manifest`` and publish it as ``_raypipe/manifest.json``; returns the signed manifest.

    The manifest it replaces is first copied to ``_raypipe/manifests/<its sequence>.json``, so the file
    under the final name is always a complete, signed manifest, and an interrupted write leaves at worst
    a history copy identical to the current manifest (which ``verify`` accepts). Raises
    :class:`ManifestError` when the current manifest is not the one ``manifest`` chains to (another run
    wrote one in between), or when key material would end up in the file.
    """
    body = {k: v for k, v in manifest.items() if k != "signature"}
    fs = layout.fs
    current_path = manifest_path(layout)
    if exists(fs, current_path):
        current_data = read_bytes(fs, current_path)
        current = json.loads(current_data)
        if manifest_digest(current) != body.get("previous"):
            raise ManifestError(
                "the current manifest is not the one this manifest was built on; rebuild it before writing"
            )
        publish_bytes(fs, history_path(layout, int(current["sequence"])), current_data)
    elif body.get("previous") is not None:
        raise ManifestError("this manifest chains to a previous one, but OUTPUT has no current manifest")
    signed = {**body, "signature": sign(signed_payload(body), key)}
    data = manifest_bytes(signed)
    if any(form in data for form in key.secret_forms()):
        raise ManifestError("refusing to write a manifest that contains the signing key")
    publish_bytes(fs, current_path, data)
    log.info("wrote signed manifest %d (%s key %s)", signed["sequence"], key.algorithm, key.key_id)
    return signed


def iter_history(layout: OutputLayout) -> Iterator[tuple[str, bytes]]:
    """``(file name, bytes)`` of the stored earlier manifests, in name (= sequence) order."""
    fs, folder = layout.fs, layout.state(HISTORY_DIR)
    if not exists(fs, folder):
        return
    for path in sorted(fs.ls(folder, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".json") and not name.startswith("."):
            yield name, read_bytes(fs, path)
