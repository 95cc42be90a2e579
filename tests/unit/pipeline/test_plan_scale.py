"""Planning makes no request per input shard for what one listing can rule out: with 300 fresh shards
it never asks whether a completion marker exists (it lists OUTPUT once), and a marker the listing shows
is still read and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

import raypipe.pipeline.plan as plan_module
from raypipe.config import build_config
from raypipe.io.tars import Sample, tar_bytes
from raypipe.layout import OutputLayout, done_name
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.plan import OutputConflictError, make_plan


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    data = tar_bytes([Sample("a", [("a.txt", b"no face")])])
    for index in range(300):
        (folder / f"part-{index:05d}.tar").write_bytes(data)
    return folder


def test_fresh_shards_cost_no_request_each(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config({"input": str(inputs / "part-{00000..00299}.tar"), "output": str(tmp_path / "out")}, {})
    layout = OutputLayout(str(tmp_path / "out"))
    asked: list[str] = []
    real = plan_module.exists
    monkeypatch.setattr(plan_module, "exists", lambda fs, path: asked.append(path) or real(fs, path))
    plan = make_plan(config, layout)
    assert len(plan.pending) == 300
    assert not [path for path in asked if path.endswith(".done.json")]  # one listing, no per-shard probe
    assert len(asked) < 10


def test_a_listed_marker_is_still_checked(inputs: Path, tmp_path: Path) -> None:
    config = build_config({"input": str(inputs / "part-{00000..00001}.tar"), "output": str(tmp_path / "out")}, {})
    layout = OutputLayout(str(tmp_path / "out"))
    make_plan(config, layout)
    forged = tmp_path / "out" / done_name("part-00000.tar")
    forged.parent.mkdir(parents=True)
    forged.write_text('{"forged": true}')  # a marker without its files
    plan = make_plan(config, layout)
    assert sorted(w.name for w in plan.pending) == ["part-00000.tar", "part-00001.tar"]  # not taken as done
    assert not forged.exists()  # dropped as it did not check out


def test_per_shard_requests_run_concurrently_and_bounded(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each storage request of planning takes 20 ms here (identity, committed fragments): one after
    # another 300 shards would take 12 s; at most REQUESTS_IN_FLIGHT of them run at once.
    import threading
    import time

    from raypipe.io.concurrent import REQUESTS_IN_FLIGHT

    lock, running, peaks = threading.Lock(), [0], {"identity": 0, "fragments": 0}

    def slow(kind: str, real: object):
        def call(*args: object, **kwargs: object) -> object:
            with lock:
                running[0] += 1
                peaks[kind] = max(peaks[kind], running[0])
            time.sleep(0.02)
            with lock:
                running[0] -= 1
            return real(*args, **kwargs)  # type: ignore[operator]

        return call

    config = build_config({"input": str(inputs / "part-{00000..00299}.tar"), "output": str(tmp_path / "out")}, {})
    layout = OutputLayout(str(tmp_path / "out"))
    monkeypatch.setattr(plan_module, "object_identity", slow("identity", plan_module.object_identity))
    monkeypatch.setattr(plan_module, "_shards_with_fragments", lambda layout: {f"part-{i:05d}.tar" for i in range(300)})
    monkeypatch.setattr(
        plan_module, "committed_positions", slow("fragments", lambda *a, **k: (Positions({0}), None, set()))
    )
    plan = make_plan(config, layout)
    assert [w.committed for w in plan.pending] == [Positions({0})] * 300
    assert [w.name for w in plan.pending] == [f"part-{i:05d}.tar" for i in range(300)]  # in input order
    assert 1 < peaks["identity"] <= REQUESTS_IN_FLIGHT
    assert 1 < peaks["fragments"] <= REQUESTS_IN_FLIGHT


def test_an_output_in_the_earlier_layout_is_refused_by_name(inputs: Path, tmp_path: Path) -> None:
    config = build_config({"input": str(inputs / "part-{00000..00001}.tar"), "output": str(tmp_path / "out")}, {})
    (tmp_path / "out" / "_raypipe").mkdir(parents=True)
    (tmp_path / "out" / "_raypipe" / "job.json").write_text('{"config_hash": "c0ffee"}')
    with pytest.raises(OutputConflictError, match=r"earlier layout \(_raypipe/job.json"):
        make_plan(config, OutputLayout(str(tmp_path / "out")))
    assert not (tmp_path / "out" / ".raypipe").exists()  # nothing written beside it
