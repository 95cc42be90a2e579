"""The signed run manifest: what a run released, in a form a compliance officer can check.

``OUTPUT/.raypipe/manifest.json`` holds one entry per finalized shard: the sha256 of its tar and audit
file and the RFC 6962 Merkle root of its audit records (all computed at finalize from the bytes as
they were written, never read back), its sample counts and its pinned input; totals per status; the
Merkle root over the shard entries (so every record is committed to through its shard's root); the
run's parameters, models and weight hashes; and a signature over all of it.

The signed history is the truth, not the disk. A new manifest starts from the previous *signed*
manifest: it carries every earlier entry over unchanged and adds entries only for shards the run
produced. An entry never changes along the chain unless the manifest that changes it says why (an
``--overwrite`` run records every entry it dropped in ``overwrite.removed``). A run that produced
nothing writes no manifest. Each manifest's ``previous`` is the sha256 of the one it replaces, which
is kept as ``.raypipe/manifests/<sequence:06d>.json``: the manifests form a hash chain, so no earlier
run can be rewritten without breaking every later link. Building a manifest reads no shard files, so
the evidence of a run costs O(its work), not O(output).

Layout (``format`` = ``raypipe.manifest/2``)::

    {
      "format": "raypipe.manifest/2",
      "sequence": 2,                      # 1 for the first manifest of OUTPUT
      "previous": "<sha256 hex of the previous manifest's canonical JSON, signature included>" | null,
      "chain_id": "<32 hex, the same along the chain>",
      "created": "2024-05-01T12:00:00Z",
      "run": {"config_hash", "code_version", "models", "weight_hashes", "started", "finished",
              "method", ...},            # as given by the caller; nothing secret
      "shards": {"data-00001.tar": {"tar_sha256", "audit_sha256", "samples", "released",
                                     "counts": {status: n}, "records_root", "config_hash",
                                     "input": {"uri", "size", "etag" | "mtime_ns", "sha256"}}, ...},
      "added": ["data-00001.tar", ...],   # the shards this run produced
      "overwrite": null | {"removed": [shard, ...], "reason": "..."},
      "counts": {status: n}, "samples": n, "released": n,
      "records": {"count": n, "merkle_root": "<hex>", "tree": "rfc6962-sha256",
                  "leaf": "canonical JSON of {name, entry} per shard, shards by name"},
      "signature": {"algorithm": "hmac-sha256" | "ed25519", "key_id": "<16 hex>", "signature": "<hex>"}
    }

The signature covers the canonical JSON (:func:`raypipe.audit.signing.canonical`) of everything but
``signature``; the file itself is pretty-printed for people.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow.parquet as pq

from raypipe.audit.merkle import MerkleBuilder
from raypipe.audit.signing import Key, canonical, describe_mismatch, mac, sign, verify
from raypipe.io.publish import exists, publish_bytes, read_bytes
from raypipe.io.storage import redact
from raypipe.layout import (
    DONE_SUFFIX,
    HISTORY_DIR,
    MANIFEST_FILE,
    STATE_DIR,
    OutputLayout,
    output_sha256,
    shard_of_stem,
)
from raypipe.logs import get_logger
from raypipe.records import Status

log = get_logger(__name__)

FORMAT = "raypipe.manifest/2"
MERKLE_TREE = "rfc6962-sha256"
LEAF_ENCODING = "canonical JSON of {name, entry} per shard, shards by name"
ENTRY_FIELDS = (
    "tar_sha256",
    "audit_sha256",
    "samples",
    "released",
    "counts",
    "records_root",
    "config_hash",
    "input",
)
MAX_MANIFEST_BYTES = 256 * 2**20  # a manifest of 10^6 shards is ~500 MB pretty-printed; cap what we parse
MAX_JSON_DEPTH = 16
RELEASED_STATUSES = frozenset(s.value for s in Status if s.releasable)

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


def parse_json(data: bytes, what: str) -> Any:
    """JSON from untrusted bytes, bounded in size and nesting; raises ``ValueError`` naming ``what``."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{what}: {len(data)} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError(f"{what}: nested too deeply to be a raypipe file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: not UTF-8 ({exc.reason})") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins; a signed file must mean one thing to all of them.
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        twice = next(name for name, _ in pairs if name in seen or seen.add(name))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {twice[:80]!r} appears twice in one object")
    return value


def read_manifest(layout: OutputLayout) -> dict[str, Any] | None:
    """The current manifest of OUTPUT, unverified, or None when there is none yet."""
    path = manifest_path(layout)
    if not exists(layout.fs, path):
        return None
    value = parse_json(read_bytes(layout.fs, path), f"{STATE_DIR}/{MANIFEST_FILE}")
    if not isinstance(value, dict):
        raise ManifestError(f"{STATE_DIR}/{MANIFEST_FILE} is not a manifest")
    return value


def read_signed_manifest(layout: OutputLayout, key: Key) -> dict[str, Any] | None:
    """The current manifest of OUTPUT after checking its format and signature; None when there is none.

    A run builds on this manifest, so one that was changed, or signed by another key, stops the run
    (:class:`ManifestError`) instead of being extended.
    """
    try:
        manifest = read_manifest(layout)
    except ValueError as exc:
        raise ManifestError(f"the current manifest of {redact(layout.root)} is unreadable: {exc}") from None
    if manifest is None:
        return None
    where = f"{redact(layout.root)}/{STATE_DIR}/{MANIFEST_FILE}"
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("shards"), dict):
        raise ManifestError(f"{where} is not a {FORMAT} manifest; run `raypipe audit verify` on it")
    if not verify(signed_payload(manifest), manifest.get("signature"), key):
        raise ManifestError(
            f"{where} does not verify with the audit key ({describe_mismatch(manifest.get('signature'), key)}); "
            "a run never extends a manifest it cannot verify: run `raypipe audit verify`"
        )
    return manifest


def finished_shards(layout: OutputLayout, manifest: dict[str, Any] | None) -> list[str]:
    """The shards a reader of OUTPUT should look at: the manifest's, or, with no manifest yet (a run
    that has not finished), those that carry a completion marker."""
    if manifest is not None:
        return sorted(manifest.get("shards") or {})
    return marked_shards(layout)


def marked_shards(layout: OutputLayout) -> list[str]:
    """Names (``<stem>.tar``) of the shards whose completion marker OUTPUT lists, from one (paginated)
    listing. A listing only rules shards out: a marker it shows must still be read and checked."""
    if not exists(layout.fs, layout.markers()):
        return []
    names = [path.rstrip("/").rsplit("/", 1)[-1] for path in layout.fs.ls(layout.markers(), detail=False)]
    return sorted(shard_of_stem(name[: -len(DONE_SUFFIX)]) for name in names if name.endswith(DONE_SUFFIX))


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


def face_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Faces per status over audit records."""
    return dict(sorted(Counter(str(face.get("status")) for row in rows for face in row.get("faces") or []).items()))


def faces_retried(rows: Iterable[dict[str, Any]]) -> int:
    """Faces that took more than one diffusion attempt, whatever their status."""
    return sum((face.get("attempts") or 0) > 1 for row in rows for face in row.get("faces") or [])


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


MARKER_MAC = "mac"  # completion markers carry an HMAC under the run's fragment key (see commit.py)


def marker_mac(marker: dict[str, Any], secret: bytes) -> str:
    """The HMAC of a completion marker (everything but its ``mac``), under the run's fragment key."""
    return mac(secret, b"raypipe marker", canonical({k: v for k, v in marker.items() if k != MARKER_MAC}))


def entry_from_marker(marker: dict[str, Any]) -> dict[str, Any]:
    """A shard's manifest entry: the fields of its completion marker that the manifest commits to."""
    return {name: marker.get(name) for name in ENTRY_FIELDS}


def entry_from_files(layout: OutputLayout, shard: str, secret: bytes | None = None) -> dict[str, Any]:
    """A shard's entry from its marker, after checking the files under OUTPUT still match it.

    For shards finalized but not yet signed (a run that died before its manifest): reads that shard's
    tar and audit once. With ``secret`` (the fragment key of the job's signing key) the marker must carry
    a valid HMAC, so a shard rewritten with a consistent marker by someone without the key is refused.
    Raises :class:`ManifestError` for a shard that is not finalized, unauthenticated or changed.
    """
    try:
        marker = layout.read_marker(shard)
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{shard}: unreadable completion marker ({exc})") from None
    if marker is None:
        raise ManifestError(f"{shard}: not finalized (no completion marker); finish the run first")
    if secret is not None and not hmac.compare_digest(str(marker.get(MARKER_MAC)), marker_mac(marker, secret)):
        raise ManifestError(f"{shard}: its completion marker is not authenticated by the audit key")
    fs = layout.fs
    audit_data = read_bytes(fs, layout.audit(shard))
    rows = audit_rows(audit_data)
    recomputed = {
        "tar_sha256": output_sha256(layout, shard),
        "audit_sha256": hashlib.sha256(audit_data).hexdigest(),
        "samples": len(rows),
        "released": sum(1 for row in rows if row.get("status") in RELEASED_STATUSES),
        "counts": status_counts(rows),
        "records_root": records_root(rows),
    }
    disagree = [name for name, value in recomputed.items() if marker.get(name) != value]
    if disagree:
        raise ManifestError(
            f"{shard}: the files disagree with the completion marker on {', '.join(disagree)}; "
            "the shard changed after it was finalized"
        )
    if [row["seq"] for row in rows] != list(range(len(rows))):
        raise ManifestError(f"{shard}: audit records are not the samples 0..{len(rows) - 1} in input order")
    return entry_from_marker(marker)


def entries_root(shards: dict[str, dict[str, Any]]) -> str:
    """RFC 6962 root (hex) over the shard entries, shards in name order."""
    builder = MerkleBuilder()
    for name in sorted(shards):
        builder.add(canonical({"name": name, "entry": _json_safe(shards[name])}))
    return builder.root().hex()


def build_manifest(
    previous: dict[str, Any] | None,
    added: dict[str, dict[str, Any]],
    run: dict[str, Any],
    overwrite: str | None = None,
) -> dict[str, Any]:
    """The (unsigned) manifest that follows ``previous`` (the current signed manifest, or None).

    Every entry of ``previous`` is carried over unchanged, and ``added`` (shard name -> entry, see
    :func:`entry_from_marker`) holds the shards this run produced. With ``overwrite`` (the reason),
    the earlier entries are dropped instead and listed in ``overwrite.removed``. ``run`` carries
    ``config_hash``, ``code_version``, ``models``, ``weight_hashes``, ``started``, ``finished``, the
    method parameters and anything else worth stating; it must hold nothing secret. Raises
    :class:`ManifestError` when an added entry would change an earlier one without ``overwrite``.
    """
    _check_run(run)
    carried: dict[str, dict[str, Any]] = dict(previous["shards"]) if previous else {}
    removed: list[str] = []
    if overwrite is not None:
        removed, carried = sorted(carried), {}
    changed = sorted(name for name, entry in added.items() if name in carried and carried[name] != entry)
    if changed:
        raise ManifestError(
            f"{', '.join(changed[:5])}: already signed with other content; an entry of the signed history "
            "changes only with --overwrite"
        )
    entries = {**carried, **{name: dict(entry) for name, entry in added.items()}}
    totals: Counter[str] = Counter()
    for entry in entries.values():
        totals.update(entry["counts"])
    manifest = {
        "format": FORMAT,
        "sequence": int(previous["sequence"]) + 1 if previous else 1,
        "previous": manifest_digest(previous) if previous else None,
        # Names this output's history (the same for every manifest of the chain); checkpoints kept
        # outside OUTPUT are filed under it.
        "chain_id": str(previous["chain_id"]) if previous else uuid.uuid4().hex,
        "created": _utc_now(),
        "run": run,
        "shards": dict(sorted(entries.items())),
        "added": sorted(added),
        "overwrite": {"removed": removed, "reason": overwrite} if overwrite is not None else None,
        "counts": dict(sorted(totals.items())),
        "samples": sum(e["samples"] for e in entries.values()),
        "released": sum(e["released"] for e in entries.values()),
        "records": {
            "count": sum(e["samples"] for e in entries.values()),
            "merkle_root": entries_root(entries),
            "tree": MERKLE_TREE,
            "leaf": LEAF_ENCODING,
        },
    }
    log.info(
        "manifest %d: %d shards (%d added), %d records, root %s",
        manifest["sequence"],
        len(entries),
        len(added),
        manifest["records"]["count"],
        manifest["records"]["merkle_root"][:16],
    )
    return manifest


# ---------------------------------------------------------------------------------------------- write


def write_manifest(layout: OutputLayout, manifest: dict[str, Any], key: Key) -> dict[str, Any]:
    """Sign ``manifest`` and publish it as ``.raypipe/manifest.json``; returns the signed manifest.

    The manifest it replaces is first copied to ``.raypipe/manifests/<its sequence>.json``, so the file
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
        current = parse_json(current_data, f"{STATE_DIR}/{MANIFEST_FILE}")
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


def iter_history(layout: OutputLayout) -> Iterator[tuple[str, bytes | None]]:
    """``(file name, bytes)`` of the stored earlier manifests, in name (= sequence) order; the bytes are
    None for an entry that is not a regular file of at most :data:`MAX_MANIFEST_BYTES` (never read)."""
    fs, folder = layout.fs, layout.state(HISTORY_DIR)
    if not exists(fs, folder):
        return
    for info in sorted(fs.ls(folder, detail=True), key=lambda item: str(item["name"])):
        path = str(info["name"])
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith("."):
            continue
        regular = (
            info.get("type") == "file" and not info.get("islink") and int(info.get("size") or 0) <= MAX_MANIFEST_BYTES
        )
        yield name, read_bytes(fs, path) if regular else None
