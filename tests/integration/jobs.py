"""Helpers shared by the job tests: sample shards, configs, reading outputs back."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from raypipe.config import JobConfig, build_config
from raypipe.io.tars import Sample, iter_samples, tar_bytes

TEST_METHOD = {"num_steps": 6, "face_size": 128, "seed": 0}
TEST_MODELS = {"preset": "tiny", "analyzer": "dlib", "device": "cpu"}
TEST_PIPELINE = {"num_gpus_per_actor": 0, "num_cpus_per_actor": 0.5, "batch_size": 4, "progress": False}


def jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_shards(shards: int = 3, per_shard: int = 5) -> dict[str, bytes]:
    """Shards of ``per_shard`` samples: a real portrait (PNG), faceless photos, text members."""
    from skimage import data

    portrait = png(np.ascontiguousarray(data.astronaut()))
    faceless = [jpeg(np.ascontiguousarray(data.coffee())), jpeg(np.ascontiguousarray(data.rocket()))]
    out = {}
    index = 0
    for shard in range(shards):
        samples = []
        for i in range(per_shard):
            key = f"s{shard}/{index:05d}"
            image = ("png", portrait) if i == 0 else ("jpg", faceless[i % 2])
            members = [(f"{key}.{image[0]}", image[1])]
            members.append((f"{key}.json", json.dumps({"i": index}).encode()))
            if i % 2:
                members.append((f"{key}.txt", b"caption %d" % index))
            members.append((f"{key}.cls", str(i).encode()))
            samples.append(Sample(key=key, members=members))
            index += 1
        out[f"part-{shard:05d}.tar"] = tar_bytes(samples)
    return out


def uniform_shards(shards: int = 2, per_shard: int = 3) -> dict[str, bytes]:
    """Shards whose samples all have the same members (``jpg`` + ``json``), as readers that infer one
    schema from the first samples need (Hugging Face ``datasets``); the first sample of each is a portrait."""
    from skimage import data

    portrait, faceless = jpeg(np.ascontiguousarray(data.astronaut())), jpeg(np.ascontiguousarray(data.coffee()))
    out = {}
    for shard in range(shards):
        samples = [
            Sample(
                key=f"{shard:03d}{i:05d}",
                members=[
                    (f"{shard:03d}{i:05d}.jpg", portrait if i == 0 else faceless),
                    (f"{shard:03d}{i:05d}.json", b"{}"),
                ],
            )
            for i in range(per_shard)
        ]
        out[f"part-{shard:05d}.tar"] = tar_bytes(samples)
    return out


def parquet_tables(tables: int = 2, rows: int = 3) -> dict[str, bytes]:
    """Parquet tables as Hugging Face ``datasets`` writes them: an ``image`` struct ``{bytes, path}``
    (the first row of each a portrait), a ``text`` column and the ``huggingface`` schema metadata."""
    import pyarrow as pa
    from skimage import data

    portrait, faceless = jpeg(np.ascontiguousarray(data.astronaut())), jpeg(np.ascontiguousarray(data.coffee()))
    features = {"image": {"_type": "Image"}, "text": {"dtype": "string", "_type": "Value"}}
    schema = pa.schema(
        [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("text", pa.string())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )
    out = {}
    for table in range(tables):
        values = [
            {"image": {"bytes": portrait if i == 0 else faceless, "path": None}, "text": f"row {table}-{i}"}
            for i in range(rows)
        ]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(values, schema=schema), buffer)
        out[f"train-{table:05d}-of-{tables:05d}.parquet"] = buffer.getvalue()
    return out


def job_config(inputs: str | list[str], output: str, **sections: dict[str, Any]) -> JobConfig:
    data: dict[str, Any] = {
        "input": inputs,
        "output": output,
        "models": TEST_MODELS | sections.pop("models", {}),
        "method": TEST_METHOD | sections.pop("method", {}),
        "pipeline": TEST_PIPELINE | sections.pop("pipeline", {}),
    }
    data.update(sections)
    return build_config(data, {})


def read_tar(data: bytes) -> list[Sample]:
    items = list(iter_samples(io.BytesIO(data)))
    assert all(isinstance(i, Sample) for i in items)
    return items  # type: ignore[return-value]


def read_audit(data: bytes) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(data)).to_pylist()


def tree_bytes(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob(pattern))}
