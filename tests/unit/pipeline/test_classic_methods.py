"""The classic methods (``method.name: blur | pixelate | mask``): the job's own stages without Ray, with
real decode, dlib detection, the re-identification gate, fragments, finalize, signed manifest and verify.
No diffusion model is built: the classic path must not need one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypipe.anonymize.classic import region
from raypipe.anonymize.pipeline import ClassicAnonymizer
from raypipe.audit.manifest import build_manifest, entry_from_marker, read_manifest, write_manifest
from raypipe.audit.signing import parse_key
from raypipe.audit.verify import verify_output
from raypipe.config import AuditConfig, ConfigError, LimitsConfig, MethodConfig, ModelsConfig, build_config
from raypipe.io.storage import StorageOptions
from raypipe.layout import OutputLayout, audit_name
from raypipe.pipeline.commit import RunInfo, commit_fragment, finalize_shard
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.run import job_stages
from raypipe.pipeline.stages import Compose, Decode, Detect
from raypipe.records import FaceStatus, Status
from tests.integration.jobs import read_audit, read_tar, sample_shards

KEY = parse_key(b"0123456789abcdef0123456789abcdef", "test")
MODELS = ModelsConfig(preset="tiny", analyzer="dlib", device="cpu")
CLASSIC = ("blur", "pixelate", "mask")


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("in") / "part-00000.tar"
    path.write_bytes(sample_shards(shards=1, per_shard=3)["part-00000.tar"])
    return path


@pytest.fixture(scope="module")
def detect() -> Detect:
    return Detect(MODELS, MethodConfig(name="blur"), LimitsConfig()).ready()


def run_classic(shard: Path, out: Path, detect: Detect, method: MethodConfig) -> None:
    """read -> decode -> detect -> compose (which hides the faces) -> commit -> finalize -> manifest."""
    layout = OutputLayout(str(out))
    tasks = list(shard_tasks(ShardWork(str(shard), shard.name), StorageOptions(), LimitsConfig()))
    detect.method = method
    tasks = Compose(AuditConfig(), "dlib", method=method).ready()(detect(Decode(LimitsConfig())(tasks)))
    info = RunInfo(config_hash="c" * 64, code_version="test", method={"name": method.name, "guidance_scale": -10.0})
    commit_fragment(layout, shard.name, tasks, info)
    marker = finalize_shard(layout, shard.name, None, source=str(shard))
    added = {shard.name: entry_from_marker(marker)}
    write_manifest(layout, build_manifest(read_manifest(layout), added, {"config_hash": "c" * 64}), KEY)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.mark.parametrize("name", CLASSIC)
def test_a_classic_method_hides_the_face_passes_the_gate_and_verifies(
    name: str, shard: Path, detect: Detect, tmp_path: Path
) -> None:
    run_classic(shard, tmp_path, detect, MethodConfig(name=name))
    records = read_audit((tmp_path / audit_name(shard.name)).read_bytes())
    assert [r["status"] for r in records] == ["anonymized", "no_face", "no_face"]
    assert {r["method"] for r in records} == {name}
    assert all(r["guidance_scale"] is None and r["num_steps"] is None for r in records)  # not diffusion's settings
    face = records[0]["faces"][0]
    assert face["status"] == "anonymized" and face["distance"] >= face["threshold"]  # the gate judged it
    original = _pixels(read_tar(shard.read_bytes())[0].members[0][1])
    released = _pixels(read_tar((tmp_path / shard.name).read_bytes())[0].members[0][1])
    left, top, right, bottom = region(original.shape, tuple(face["box"]))
    inside = np.zeros(original.shape[:2], bool)
    inside[top:bottom, left:right] = True
    assert np.array_equal(released[~inside], original[~inside])  # PNG: lossless, so exactly
    assert np.abs(released[inside] - original[inside]).mean() > 20
    if name == "mask":
        assert not released[inside].any()
    assert verify_output(str(tmp_path), KEY).ok


def test_the_classic_anonymizer_runs_the_same_gate_on_one_image() -> None:
    from skimage import data

    from raypipe.anonymize.analyzers import build_analyzer

    image = np.ascontiguousarray(data.astronaut())
    result = ClassicAnonymizer(build_analyzer("dlib"), MethodConfig(name="pixelate")).anonymize(image, "astronaut")
    assert result.status is Status.ANONYMIZED and [f.status for f in result.faces] == [FaceStatus.ANONYMIZED]
    assert result.faces[0].distance is not None and result.faces[0].distance >= result.faces[0].threshold
    with pytest.raises(ValueError, match="not a classic method"):
        ClassicAnonymizer(build_analyzer("dlib"), MethodConfig())


def test_a_classic_job_has_no_anonymize_stage_and_asks_for_no_gpu() -> None:
    for detect in ("cpu", "gpu_actor"):
        config = build_config(
            {"input": "in/a.tar", "output": "out", "method": {"name": "blur"}, "pipeline": {"detect": detect}}, {}
        )
        chain = job_stages(config, {"CPU": 8.0, "GPU": 4.0})
        assert [stage.name for stage in chain] == ["Decode", "Detect", "Compose"]
        assert all(stage.resources.num_gpus == 0 for stage in chain)
    diffusion = job_stages(build_config({"input": "in/a.tar", "output": "out"}, {}), {"CPU": 8.0, "GPU": 4.0})
    assert "Anonymize" in [stage.name for stage in diffusion]


def test_an_unknown_method_is_named() -> None:
    with pytest.raises(ConfigError, match=r"method\.name.*'deface'"):
        build_config({"input": "a.tar", "output": "out", "method": {"name": "deface"}}, {})
