"""A finished run's OUTPUT built by hand: 2 shards x 3 samples (anonymized, no_face, quarantined).

The files mimic ``raypipe.pipeline.commit.finalize_shard`` exactly: the tar holds the released samples
in input order, the audit parquet every sample, the marker the same hashes and counts.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raypipe.audit.manifest import (
    audit_rows,
    build_manifest,
    entry_from_files,
    read_manifest,
    records_root,
    write_manifest,
)
from raypipe.audit.schema import AuditRecord, records_table, sample_digest
from raypipe.audit.signing import Key, parse_key
from raypipe.io.tars import Sample, tar_bytes
from raypipe.layout import OutputLayout, audit_name, done_name

SHARDS = ("data-00000.tar", "data-00001.tar")
STATUSES = ("anonymized", "no_face", "quarantined")
THRESHOLD = 0.6
HMAC_SECRET = b"correct horse battery staple 0123456789"
RUN = {
    "config_hash": "c0ffee",
    "code_version": "0.1.0+test",
    "models": {"unet": "tiny-random", "recognizer": "dlib-hog"},
    "weight_hashes": {"unet": "ab" * 32},
    "started": "2024-05-01T10:00:00Z",
    "finished": "2024-05-01T11:00:00Z",
    "method": {"guidance_scale": -10.0, "skip": 0.7, "num_steps": 4, "seed": 7, "attribute_prompt": None},
    "reid": {"recognizer": "dlib-hog", "threshold": THRESHOLD},
}


def sample_key(shard_index: int, seq: int) -> str:
    return f"img{shard_index}{seq:03d}"


def _face(status: str, distance: float) -> dict[str, Any]:
    return {
        "index": 0,
        "box": [10.0, 20.0, 60.0, 80.0],
        "score": 1.25,
        "status": status,
        "seed": 1234,
        "distance": distance,
        "threshold": THRESHOLD,
        "attempts": 1,
        "guidance_scale": -10.0,
        "error": None,
    }


def _record(shard: str, shard_index: int, seq: int, status: str) -> tuple[dict[str, Any], Sample | None]:
    key = sample_key(shard_index, seq)
    members = [(f"{key}.jpg", f"jpeg bytes of {key}".encode()), (f"{key}.json", b'{"label": 1}')]
    faces: list[dict[str, Any]] = []
    out: list[tuple[str, bytes]] | None = None
    if status == "anonymized":
        faces = [_face("anonymized", 0.81)]
        out = [(f"{key}.jpg", f"anonymized jpeg of {key}".encode()), members[1]]
    elif status == "no_face":
        out = list(members)
    else:
        faces = [_face("reidentified", 0.25)]
    record = {
        "key": key,
        "seq": seq,
        "source_shard": f"s3://bucket/in/{shard}",
        "output_shard": shard if out is not None else None,
        "members": [name for name, _ in members],
        "input_sha256": sample_digest(members),
        "output_sha256": sample_digest(out) if out is not None else None,
        "status": status,
        "faces_count": len(faces),
        "faces": faces,
        "missed_faces": 0,
        "error": "a face still re-identifies" if status == "quarantined" else None,
        "error_step": "verify" if status == "quarantined" else None,
        "guidance_scale": -10.0,
        "skip": 0.7,
        "num_steps": 4,
        "seed": 7,
        "attribute_prompt": None,
        "models": json.dumps(RUN["models"], sort_keys=True),
        "weight_hashes": json.dumps(RUN["weight_hashes"], sort_keys=True),
        "config_hash": RUN["config_hash"],
        "code_version": RUN["code_version"],
        "node": "node-1",
        "device": "cpu",
        "timings": json.dumps({"anon": 0.5}),
    }
    return record, (Sample(key, out) if out is not None else None)


def sidecars(shard: str) -> tuple[str, str, str]:
    """The three files of a finalized shard, relative to OUTPUT: tar, audit, completion marker."""
    return shard, audit_name(shard), done_name(shard)


def audit_bytes(records: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(records_table([AuditRecord(**record) for record in records]), buffer)
    return buffer.getvalue()


def write_shard(root: Path, shard: str, records: list[dict[str, Any]], samples: list[Sample]) -> None:
    """Tar, audit and marker of one shard, as finalize_shard writes them."""
    tar, audit = tar_bytes(samples), audit_bytes(records)
    (root / shard).write_bytes(tar)
    (root / audit_name(shard)).parent.mkdir(parents=True, exist_ok=True)
    (root / audit_name(shard)).write_bytes(audit)
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    marker = {
        "shard": shard,
        "samples": len(records),
        "released": len(samples),
        "counts": dict(sorted(counts.items())),
        "tar_sha256": hashlib.sha256(tar).hexdigest(),
        "audit_sha256": hashlib.sha256(audit).hexdigest(),
        "records_root": records_root(audit_rows(audit)),
        "config_hash": records[0]["config_hash"] if records else None,
        "input": None,  # not pinned here; tests that need a pinned input pin a real local file
    }
    (root / done_name(shard)).write_text(json.dumps(marker, indent=2, sort_keys=True))


def shard_contents(shard_index: int) -> tuple[list[dict[str, Any]], list[Sample]]:
    shard = SHARDS[shard_index] if shard_index < len(SHARDS) else f"data-{shard_index:05d}.tar"
    records, samples = [], []
    for seq, status in enumerate(STATUSES):
        record, sample = _record(shard, shard_index, seq, status)
        records.append(record)
        if sample is not None:
            samples.append(sample)
    return records, samples


def make_output(root: Path, shards: int = len(SHARDS)) -> OutputLayout:
    """A finished OUTPUT with ``shards`` finalized shards (no manifest yet)."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        records, samples = shard_contents(index)
        write_shard(root, f"data-{index:05d}.tar", records, samples)
    return OutputLayout(str(root))


def shard_names(count: int = len(SHARDS)) -> list[str]:
    return [f"data-{index:05d}.tar" for index in range(count)]


def sign_shards(
    layout: OutputLayout, shards: list[str], key: Key, run: dict[str, Any] | None = None, overwrite: str | None = None
) -> dict[str, Any]:
    """What a run does at its end: add the shards the signed history lacks to a new signed manifest."""
    previous = read_manifest(layout)
    known = previous["shards"] if previous and overwrite is None else {}
    added = {shard: entry_from_files(layout, shard) for shard in shards if shard not in known}
    return write_manifest(layout, build_manifest(previous, added, dict(run or RUN), overwrite), key)


@pytest.fixture
def hmac_key() -> Key:
    return parse_key(HMAC_SECRET, "test secret")


@pytest.fixture(scope="session")
def ed25519_pems() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a fresh Ed25519 key."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


@pytest.fixture
def ed25519_key(ed25519_pems: tuple[bytes, bytes]) -> Key:
    return parse_key(ed25519_pems[0], "test private key")


SignedOutput = Callable[..., OutputLayout]


@pytest.fixture
def signed_output(tmp_path: Path) -> SignedOutput:
    """Factory: build OUTPUT under tmp_path and write its signed manifest with the given key."""

    def build(key: Key, shards: int = len(SHARDS), name: str = "out") -> OutputLayout:
        layout = make_output(tmp_path / name, shards)
        sign_shards(layout, shard_names(shards), key)
        return layout

    return build


def face_png(shade: int, size: int = 100) -> bytes:
    """A small real PNG: a gradient with a lighter square where the records' face box is."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    rgb = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), shade)], axis=2)
    rgb[20:80, 10:60] = (230, 200, 180)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_output_with_images(root: Path, shards: int = len(SHARDS)) -> OutputLayout:
    """Like :func:`make_output`, but the released image of each anonymized sample is a real PNG."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        records, samples = shard_contents(index)
        by_key = {sample.key: sample for sample in samples}
        released = []
        for record in records:
            key = record["key"]
            if record["status"] == "anonymized":
                out = [(f"{key}.png", face_png(40 * index)), (f"{key}.json", b'{"label": 1}')]
                record["members"] = [name for name, _ in out]
                record["output_sha256"] = sample_digest(out)
                released.append(Sample(key, out))
            elif key in by_key:
                released.append(by_key[key])
        write_shard(root, f"data-{index:05d}.tar", records, released)
    return OutputLayout(str(root))
