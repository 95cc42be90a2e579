"""Inputs are pinned: committed work read from another version of an input shard is never mixed in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raypipe.config import ConfigError, LimitsConfig, build_config
from raypipe.io.storage import StorageOptions
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import RunInfo, commit_fragment, committed_positions, finalize_shard
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.plan import make_plan
from raypipe.pipeline.read import InputChangedError, shard_tasks
from raypipe.records import Status
from tests.integration.jobs import TEST_MODELS, sample_shards

RUN = RunInfo(config_hash="c" * 64, code_version="test", method={})


def _config(inputs: Path, output: Path):  # type: ignore[no-untyped-def]
    return build_config({"input": str(inputs / "*.tar"), "output": str(output), "models": TEST_MODELS}, {})


def _commit_first_samples(layout: OutputLayout, plan, count: int) -> None:  # type: ignore[no-untyped-def]
    (work,) = plan.pending
    tasks = [t for t in shard_tasks(work, StorageOptions(), LimitsConfig()) if not t.end_of_shard][:count]
    for task in tasks:
        task.status, task.out_members = Status.NO_FACE, task.members
    commit_fragment(layout, work.name, tasks, RUN)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "part-00000.tar").write_bytes(sample_shards(shards=1, per_shard=3)["part-00000.tar"])
    return folder


def test_committed_work_of_a_changed_input_is_dropped(inputs: Path, tmp_path: Path) -> None:
    config, layout = _config(inputs, tmp_path / "out"), OutputLayout(str(tmp_path / "out"))
    _commit_first_samples(layout, make_plan(config, layout), 2)
    assert set(make_plan(config, layout).pending[0].committed) == {0, 1}  # unchanged input: resumed
    shard = inputs / "part-00000.tar"
    shard.write_bytes(sample_shards(shards=1, per_shard=4)["part-00000.tar"])  # swapped before the resume
    plan = make_plan(config, layout)
    assert len(plan.pending[0].committed) == 0
    assert committed_positions(layout, "part-00000.tar") == (Positions(), None)


def test_an_input_that_changes_after_planning_stops_its_read(inputs: Path, tmp_path: Path) -> None:
    config, layout = _config(inputs, tmp_path / "out"), OutputLayout(str(tmp_path / "out"))
    (work,) = make_plan(config, layout).pending
    shard = inputs / "part-00000.tar"
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(InputChangedError, match="changed after the run was planned"):
        list(shard_tasks(work, StorageOptions(), LimitsConfig()))


def test_the_marker_pins_the_input_read(inputs: Path, tmp_path: Path) -> None:
    import hashlib

    config, layout = _config(inputs, tmp_path / "out"), OutputLayout(str(tmp_path / "out"))
    (work,) = make_plan(config, layout).pending
    tasks = list(shard_tasks(work, StorageOptions(), LimitsConfig()))
    for task in tasks:
        if not task.end_of_shard:
            task.status, task.out_members = Status.NO_FACE, task.members
    commit_fragment(layout, work.name, tasks, RUN)
    marker = finalize_shard(layout, work.name)
    data = (inputs / "part-00000.tar").read_bytes()
    assert marker["input"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert marker["input"]["size"] == len(data) and "mtime_ns" in marker["input"]


def test_a_shard_whose_state_names_could_be_another_shards_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.parquet.tar").write_bytes(sample_shards(shards=1, per_shard=1)["part-00000.tar"])
    config = _config(tmp_path / "in", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"named 'x.parquet.tar', which raypipe cannot tell from 'x.parquet'"):
        make_plan(config, OutputLayout(str(tmp_path / "out")))
