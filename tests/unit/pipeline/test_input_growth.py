"""One configuration, a growing set of input shards: new shards are processed, a removed or changed
one is refused by name, and a refused configuration names the settings that changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.config import LimitsConfig, build_config
from raypipe.io.storage import StorageOptions
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import RunInfo, commit_fragment, finalize_shard
from raypipe.pipeline.plan import OutputConflictError, config_hash, make_plan
from raypipe.pipeline.read import shard_tasks
from raypipe.records import Status
from tests.integration.jobs import TEST_MODELS, sample_shards

RUN = RunInfo(config_hash="c" * 64, code_version="test", method={})


def config(inputs: str, output: Path, **method: object):  # type: ignore[no-untyped-def]
    return build_config({"input": inputs, "output": str(output), "models": TEST_MODELS, "method": method}, {})


def finish(layout: OutputLayout, plan) -> None:  # type: ignore[no-untyped-def]
    """Commit and finalize every pending shard, each sample released as it is (no Ray, no models)."""
    for work in plan.pending:
        tasks = list(shard_tasks(work, StorageOptions(), LimitsConfig()))
        for task in tasks:
            if not task.end_of_shard:
                task.status, task.out_members = Status.NO_FACE, task.members
        commit_fragment(layout, work.name, tasks, RUN)
        finalize_shard(layout, work.name, source=work.uri)


def test_a_brace_range_that_grows_processes_only_the_new_shards(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    first = config(str(inputs / "part-{00000..00001}.tar"), out)
    finish(layout, make_plan(first, layout))
    grown = config(str(inputs / "part-{00000..00002}.tar"), out)
    assert config_hash(grown) == config_hash(first)  # which shards is not part of the configuration
    plan = make_plan(grown, layout)
    assert sorted(plan.done) == ["part-00000.tar", "part-00001.tar"]
    assert [w.name for w in plan.pending] == ["part-00002.tar"]


def test_a_shard_dropped_from_the_input_is_refused_by_name(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    finish(layout, make_plan(config(str(inputs / "part-{00000..00002}.tar"), out), layout))
    with pytest.raises(OutputConflictError, match=r"holds part-00002\.tar, which INPUT no longer lists"):
        make_plan(config(str(inputs / "part-{00000..00001}.tar"), out), layout)
    plan = make_plan(config(str(inputs / "part-{00000..00001}.tar"), out), layout, overwrite=True)
    assert plan.overwrite and sorted(w.name for w in plan.pending) == ["part-00000.tar", "part-00001.tar"]
    assert not (out / "part-00002.tar").exists()  # --overwrite deleted what the old input made


def test_a_changed_input_of_a_finalized_shard_is_refused_by_name(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    spec = str(inputs / "part-{00000..00001}.tar")
    finish(layout, make_plan(config(spec, out), layout))
    (inputs / "part-00001.tar").write_bytes(sample_shards(shards=1, per_shard=3)["part-00000.tar"])
    with pytest.raises(OutputConflictError, match=r"part-00001\.tar changed since part-00001\.tar was anonymized"):
        make_plan(config(spec, out), layout)


def test_a_different_configuration_is_refused_with_the_settings_that_changed(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    spec = str(inputs / "part-00000.tar")
    make_plan(config(spec, out), layout)
    with pytest.raises(OutputConflictError, match=r"method\.guidance_scale: -10\.0 -> -5\.0; method\.seed: 0 -> 3"):
        make_plan(config(spec, out, guidance_scale=-5.0, seed=3), layout)


def test_a_signed_shard_dropped_from_the_input_is_refused_by_name(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    # OUTPUT's verified manifest, as run() passes it: it signs a shard that this INPUT does not list.
    previous = {"sequence": 1, "shards": {"part-00009.tar": {"input": None}}}
    with pytest.raises(OutputConflictError, match=r"holds part-00009\.tar, which INPUT no longer lists"):
        make_plan(config(str(inputs / "part-00000.tar"), out), layout, previous)


def test_a_setting_one_configuration_lacks_is_named_as_absent() -> None:
    from raypipe.pipeline.plan import changed_settings

    before = {"method": {"seed": 0}}  # written by a raypipe without method.attribute_from
    now = {"method": {"seed": 0, "attribute_from": None}}
    assert changed_settings(before, now) == ["method.attribute_from: absent -> None"]
    assert changed_settings(now, now) == []
