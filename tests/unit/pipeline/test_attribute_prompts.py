"""Per-sample attribute prompts through the job's stages (without Ray): each sample's faces are made
with the prompt its own metadata names, the audit records that prompt, and metadata that cannot give
one holds only samples with faces back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from skimage import data

from raypipe.audit.report import render_report
from raypipe.audit.verify import verify_output
from raypipe.config import LimitsConfig, MethodConfig, ModelsConfig, to_dict
from raypipe.io.tars import Sample, tar_bytes
from raypipe.pipeline.stages import Anonymize
from tests.integration.jobs import jpeg, png, read_audit, read_tar
from tests.unit.pipeline.stages_run import KEY, run_stages

MODELS = ModelsConfig(preset="tiny", analyzer="dlib", device="cpu")
# One face per UNet call: a face's pixels then do not depend on which faces share its calls.
BASE = {"num_steps": 6, "face_size": 128, "face_batch_size": 1}
METADATA = [
    {"prompt": "an elderly man"},
    {"prompt": "a young woman"},
    {},  # no prompt of its own: the job's
    {"prompt": 7},  # not a string: this sample is held back
]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    portrait = png(np.ascontiguousarray(data.astronaut()))
    samples = [
        Sample(key=f"{i:05d}", members=[(f"{i:05d}.png", portrait), (f"{i:05d}.json", json.dumps(meta).encode())])
        for i, meta in enumerate(METADATA)
    ]
    faceless = jpeg(np.ascontiguousarray(data.coffee()))
    samples.append(Sample(key="00004", members=[("00004.jpg", faceless), ("00004.json", b'{"prompt": 7}')]))
    path = tmp_path_factory.mktemp("in") / "part-00000.tar"
    path.write_bytes(tar_bytes(samples))
    return path


def run(shard: Path, out: Path, **method: object) -> tuple[list[dict], dict[str, bytes]]:
    config = MethodConfig(**BASE, **method)  # type: ignore[arg-type]
    anonymize = Anonymize(MODELS, config, LimitsConfig(), detect=True).ready()
    run_stages(shard, out, anonymize, method=to_dict(config))
    assert verify_output(str(out), KEY).ok
    return read_audit((out / ".raypipe/shards/part-00000.audit.parquet").read_bytes()), {
        name: member for sample in read_tar((out / "part-00000.tar").read_bytes()) for name, member in sample.members
    }


def test_each_sample_is_anonymized_with_the_prompt_its_metadata_names(shard: Path, tmp_path: Path) -> None:
    records, released = run(shard, tmp_path / "from-json", attribute_from="json:prompt", attribute_prompt="a child")
    assert [r["attribute_prompt"] for r in records] == ["an elderly man", "a young woman", "a child", None, None]
    assert [r["status"] for r in records] == ["anonymized"] * 3 + ["failed", "no_face"]
    assert records[3]["error_step"] == "detect"
    says = "00003.json: field prompt is int, not a string (method.attribute_from: json:prompt)"
    assert says in records[3]["error"]
    assert "00003.png" not in released and "00004.jpg" in released  # faceless: its metadata is never read
    html = render_report(str(tmp_path / "from-json"), tmp_path / "report.html").read_text()
    shown = ("an elderly man", "a young woman", "a child")
    assert ", ".join(f"&#x27;{prompt}&#x27; (1 records)" for prompt in shown) in html
    (tmp_path / "from-json/.raypipe/manifest.json").unlink()  # the report falls back on the records
    html = render_report(str(tmp_path / "from-json"), tmp_path / "unsigned.html").read_text()
    assert "3 prompts, one per sample&#x27;s metadata" in html

    # The same faces with one job-wide prompt: the sample whose own prompt is that one comes out the
    # same, byte for byte; the others do not.
    _, job_wide = run(shard, tmp_path / "job-wide", attribute_prompt="an elderly man")
    assert released["00000.png"] == job_wide["00000.png"]
    assert released["00001.png"] != job_wide["00001.png"] and released["00002.png"] != job_wide["00002.png"]


def test_a_tables_rows_take_their_prompts_from_a_column(tmp_path: Path) -> None:
    portrait = png(np.ascontiguousarray(data.astronaut()))
    faceless = jpeg(np.ascontiguousarray(data.coffee()))
    images = [portrait, portrait, faceless]

    def table(name: str, prompts: pa.Array) -> Path:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "prompt": prompts}), path)
        return path

    config = MethodConfig(**BASE, attribute_from="column:prompt", attribute_prompt="a child")  # type: ignore[arg-type]
    anonymize = Anonymize(MODELS, config, LimitsConfig(), detect=True).ready()
    texts = table("texts.parquet", pa.array(["an elderly man", None, "never read"]))
    run_stages(texts, tmp_path / "texts", anonymize, method=to_dict(config), attribute_column="prompt")
    records = read_audit((tmp_path / "texts/.raypipe/shards/texts.parquet.audit.parquet").read_bytes())
    assert [(r["status"], r["attribute_prompt"]) for r in records] == [
        ("anonymized", "an elderly man"),
        ("anonymized", "a child"),  # null: the job's prompt
        ("no_face", None),
    ]

    numbers = table("numbers.parquet", pa.array([1, 2, 3]))
    run_stages(numbers, tmp_path / "numbers", anonymize, method=to_dict(config), attribute_column="prompt")
    records = read_audit((tmp_path / "numbers/.raypipe/shards/numbers.parquet.audit.parquet").read_bytes())
    assert [r["status"] for r in records] == ["failed", "failed", "no_face"]  # faceless: never held back for it
    assert records[0]["error"] == "column 'prompt' is int64, not a string column (method.attribute_from: column:prompt)"
    assert verify_output(str(tmp_path / "numbers"), KEY).ok
