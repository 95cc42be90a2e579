"""The evidence through the real job: reruns add nothing and read no finished output, a laundered or
rolled-back OUTPUT is never signed over, inputs are pinned, and one driver writes OUTPUT at a time."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raypipe.audit.signing import parse_key
from raypipe.audit.verify import verify_output
from raypipe.config import ConfigError
from raypipe.layout import OutputLayout, audit_name, done_name
from raypipe.pipeline.lease import LeaseHeldError, lease
from raypipe.pipeline.plan import OutputConflictError
from raypipe.pipeline.run import run
from tests.integration.jobs import job_config, sample_shards

pytestmark = [pytest.mark.isolated, pytest.mark.slow]

SECRET = "5f0c9e2a7b1d4c8e93a6f2b0d7e4c1a8"


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_AUDIT_KEY", SECRET)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in sample_shards(shards=2, per_shard=2).items():
        (folder / name).write_bytes(data)
    return folder


class OpenedFiles:
    """Files opened while ``recording`` (a Python audit hook: fsspec's local files go through open())."""

    def __init__(self) -> None:
        self.recording = False
        self.paths: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.recording and event == "open" and isinstance(args[0], str):
            self.paths.append(args[0])


OPENED = OpenedFiles()


def test_a_rerun_adds_nothing_and_reads_no_finished_output(ray_local, key_env, inputs: Path, tmp_path: Path) -> None:
    out, anchor = tmp_path / "out", tmp_path / "anchor"
    config = job_config(str(inputs / "*.tar"), str(out), audit={"anchor": str(anchor)})
    first = run(config)
    assert first.ok and first.manifest == 1 and first.anchor is not None
    assert Path(first.anchor).is_file()
    OPENED.recording = True
    try:
        second = run(config)
    finally:
        OPENED.recording = False
    assert second.manifest is None and second.covered_by == 1 and second.shards_skipped == 2
    assert second.counts == first.counts
    read = [p for p in OPENED.paths if p.startswith(str(out)) and p.endswith((".tar", ".parquet"))]
    assert read == []  # no byte of a finished shard or audit file
    assert not (out / ".raypipe/manifests").exists()  # no second manifest
    report = verify_output(str(out), parse_key(SECRET.encode(), "test"), anchor=str(anchor))
    assert report.ok, report.render()


def test_a_laundered_shard_is_not_signed_over_by_the_rerun(ray_local, key_env, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = job_config(str(inputs / "*.tar"), str(out))
    assert run(config).manifest == 1
    # Put the original faces back and make the marker agree with the new tar.
    shutil.copy(inputs / "part-00000.tar", out / "part-00000.tar")
    marker_path = out / ".raypipe/shards/part-00000.done.json"
    marker = json.loads(marker_path.read_text())
    marker["tar_sha256"] = hashlib.sha256((out / "part-00000.tar").read_bytes()).hexdigest()
    marker_path.write_text(json.dumps(marker))
    key = parse_key(SECRET.encode(), "test")
    assert not verify_output(str(out), key).ok
    rerun = run(config)
    assert rerun.manifest is None  # nothing new, nothing signed
    report = verify_output(str(out), key)
    assert any(p.kind == "modified" and p.where == "part-00000.tar" for p in report.problems), report.render()
    # Deleting the marker too does not make the rerun redo (and sign) that shard: the signed history says
    # it is done.
    marker_path.unlink()
    assert run(config).manifest is None
    assert not verify_output(str(out), key).ok


def test_a_rolled_back_output_is_refused_and_named(ray_local, key_env, inputs: Path, tmp_path: Path) -> None:
    out, anchor = tmp_path / "out", tmp_path / "anchor"
    later = inputs / "part-00001.tar"
    held = later.rename(tmp_path / later.name)
    config = job_config(str(inputs / "*.tar"), str(out), audit={"anchor": str(anchor)})
    assert run(config).manifest == 1
    held.rename(later)  # the input set grows: the same glob now matches one more shard
    assert run(config).manifest == 2
    shutil.copy(out / ".raypipe/manifests/000001.json", out / ".raypipe/manifest.json")
    shutil.rmtree(out / ".raypipe/manifests")
    for path in ("part-00001.tar", audit_name("part-00001.tar"), done_name("part-00001.tar")):
        (out / path).unlink()
    key = parse_key(SECRET.encode(), "test")
    report = verify_output(str(out), key, anchor=str(anchor))
    assert {p.kind for p in report.problems} == {"rollback"}, report.render()
    with pytest.raises(ConfigError, match="OUTPUT was rolled back"):
        run(config)


def test_a_changed_input_of_a_signed_shard_is_refused(ray_local, key_env, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = job_config(str(inputs / "*.tar"), str(out))
    assert run(config).manifest == 1
    (inputs / "part-00001.tar").write_bytes(sample_shards(shards=1, per_shard=1)["part-00000.tar"])
    with pytest.raises(OutputConflictError, match=r"part-00001\.tar changed since part-00001\.tar was anonymized"):
        run(config)


def test_a_second_driver_is_refused_before_any_work(ray_local, key_env, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = job_config(str(inputs / "*.tar"), str(out))
    with lease(OutputLayout(str(out)), "another-run", ttl_s=60), pytest.raises(LeaseHeldError, match="another-run"):
        run(config)
    assert not list(out.rglob("*.tar")) and not (out / ".raypipe/config.yaml").exists()  # nothing was touched
