"""One job over a hostile corpus: every case gets its defined status and message in the audit.

The job never crashes (it exits 1: some samples failed), never deserializes a member (the pickle
payloads would create files), never writes outside OUTPUT, and its audit evidence verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from raypipe.audit.signing import KEY_ENV
from raypipe.cli import main as raypipe_main
from raypipe.images import decode_image
from raypipe.io.tars import Sample, TarProblem, TarReadError, iter_samples
from raypipe.layout import audit_name
from tests.integration.hostile import LIMITS, Case, build_corpus, hidden_face
from tests.integration.jobs import TEST_METHOD, TEST_MODELS, TEST_PIPELINE, read_audit, read_tar
from tests.integration.test_job_resume import run_job

pytestmark = [pytest.mark.isolated, pytest.mark.slow]

AUDIT_KEY = secrets.token_hex(32)
SHARDS = [f"hostile-{i:05d}.tar" for i in range(5)]
OUTPUT_FILES = ("*.tar",)  # outside .raypipe/: the anonymized shards and nothing else


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    """sha256 of every file under ``root``, outside the ``skip`` folders."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def input_samples(path: Path) -> list[Sample | TarProblem]:
    items: list[Sample | TarProblem] = []
    with contextlib.suppress(TarReadError):  # damaged shards: the samples before the damage are enough here
        items.extend(iter_samples(io.BytesIO(path.read_bytes())))
    return items


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("hostile")
    inputs, sandbox, out, work = base / "in", base / "sandbox", base / "out", base / "job"
    for folder in (inputs, sandbox, work):
        folder.mkdir()
    cases = build_corpus(inputs, sandbox)
    before = snapshot(base, skip=(out, work))
    config = work / "hostile.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": str(inputs / "hostile-*.tar"),
                "output": str(out),
                "models": TEST_MODELS,
                "method": TEST_METHOD,
                "pipeline": TEST_PIPELINE,
                "limits": LIMITS,
            }
        )
    )
    ray_temp = tempfile.mkdtemp(prefix="rph", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        code, log = run_job(config, {KEY_ENV: AUDIT_KEY, "RAY_TMPDIR": ray_temp}, timeout=600)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    return {
        "base": base,
        "inputs": inputs,
        "sandbox": sandbox,
        "out": out,
        "work": work,
        "cases": cases,
        "before": before,
        "code": code,
        "log": log,
    }


def test_the_job_finishes_every_shard_and_reports_failed_samples(corpus: dict) -> None:
    assert corpus["code"] == 1, corpus["log"]  # 1: samples failed; not 3 (a crash)
    assert f"{len(SHARDS)}/{len(SHARDS)} complete" in corpus["log"] and "Traceback" not in corpus["log"], corpus["log"]
    assert "signed manifest #1" in corpus["log"]


@pytest.mark.parametrize("shard", SHARDS)
def test_every_case_gets_its_status_and_message(corpus: dict, shard: str) -> None:
    cases: list[Case] = [c for c in corpus["cases"] if c.shard == shard]
    records = read_audit((corpus["out"] / audit_name(shard)).read_bytes())
    assert [r["key"] for r in records] == [c.key for c in cases]
    assert [r["seq"] for r in records] == list(range(len(cases)))
    for case, record in zip(cases, records):
        assert record["status"] == case.status, (case.what, record["error"])
        if case.status in ("failed", "quarantined"):
            assert record["error_step"] == case.step, case.what
            assert case.message in record["error"], (case.what, record["error"])
            assert record["output_shard"] is None and record["output_sha256"] is None
        else:
            assert record["error"] is None, case.what


@pytest.mark.parametrize("shard", SHARDS)
def test_only_released_samples_are_in_the_output_and_untouched_ones_are_byte_identical(
    corpus: dict, shard: str
) -> None:
    cases: list[Case] = [c for c in corpus["cases"] if c.shard == shard]
    released = [c for c in cases if c.status in ("anonymized", "no_face")]
    produced = read_tar((corpus["out"] / shard).read_bytes())
    assert [s.key for s in produced] == [c.key for c in released]
    originals: dict[str, Sample] = {}
    for item in input_samples(corpus["inputs"] / shard):
        if isinstance(item, Sample):
            originals.setdefault(item.key, item)  # a key seen again later is never released
    for case, sample in zip(released, produced):
        original = originals[case.key]
        assert sample.names == original.names, case.what
        if case.released_unchanged:
            assert sample.members == original.members, case.what
        else:  # anonymized: only the face changed; stored upright (no orientation tag), RGB
            (_, data), (_, new) = original.members[0], sample.members[0]
            assert new != data, case.what
            upright = decode_image(data).rgb.astype(int)
            with Image.open(io.BytesIO(new)) as image:
                assert image.mode == "RGB" and image.getexif().get(0x0112) is None, case.what
                pixels = np.asarray(image).astype(int)
            assert pixels.shape == upright.shape and np.abs(pixels - upright).mean() < 12, case.what


def test_no_hidden_face_is_released(corpus: dict) -> None:
    from skimage import data

    face = hidden_face(np.ascontiguousarray(data.astronaut()))
    assert any(face in (corpus["inputs"] / shard).read_bytes() for shard in SHARDS)  # the check is not vacuous
    for shard in SHARDS:
        assert face not in (corpus["out"] / shard).read_bytes(), shard


def test_no_member_was_ever_deserialized_or_written_outside_output(corpus: dict) -> None:
    base, out, sandbox = corpus["base"], corpus["out"], corpus["sandbox"]
    assert not list(sandbox.iterdir())  # the pickle payloads never ran
    assert snapshot(base, skip=(out, corpus["work"])) == corpus["before"]
    for escaped in (base / "escape.jpg", out.parent / "escape.jpg", Path.cwd().parent / "escape.jpg"):
        assert not escaped.exists()
    assert not Path("/abs/evil.jpg").exists()
    allowed = {p for pattern in OUTPUT_FILES for p in out.glob(pattern)}
    written = {p for p in out.rglob("*") if p.is_file() and not p.is_relative_to(out / ".raypipe")}
    assert written == allowed
    assert {p.name for p in out.glob("*.tar")} == set(SHARDS)


def test_the_payloads_were_live(corpus: dict) -> None:
    # The same bytes do create files when deserialized: the check above was not vacuous.
    import torch

    main = {s.key: s for s in input_samples(corpus["inputs"] / SHARDS[0]) if isinstance(s, Sample)}
    sandbox = corpus["sandbox"]
    pickle.loads(main["pickled"].members[0][1])  # unsafe on purpose: proves the payload is live
    torch.load(io.BytesIO(main["torched"].members[0][1]), weights_only=False)
    assert sorted(p.name for p in sandbox.iterdir()) == ["created-by-pkl", "created-by-pth"]
    for path in sandbox.iterdir():
        os.remove(path)


def test_the_audit_evidence_verifies(corpus: dict) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, AUDIT_KEY)
        assert raypipe_main(["audit", "verify", str(corpus["out"])]) == 0
