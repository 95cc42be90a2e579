"""The stage contract (raypipe.pipeline.stage): stages declare their resources and batch size, load
their models in setup (never when built), and one adapter puts any of them into a Ray Data plan."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raypipe.config import build_config
from raypipe.pipeline import stages
from raypipe.pipeline.run import compose_pool, job_stages
from raypipe.pipeline.stage import Resources, Stage, StageWorker, add_stage
from raypipe.pipeline.task import SampleTask, pack_batch, unpack_batch

ROOT = Path(__file__).resolve().parents[3]


def config(**pipeline: Any) -> Any:
    data = {
        "input": "in/{0..1}.tar",
        "output": "out",
        "models": {"preset": "tiny", "analyzer": "dlib", "device": "cpu"},
        "pipeline": pipeline,
    }
    return build_config(data, {})


def test_the_job_is_its_stages_in_order_each_with_what_it_declares() -> None:
    job = config(batch_size=4, detect_actors=2, anonymize_actors_min=1, anonymize_actors_max=3)
    chain = job_stages(job, {"CPU": 16.0})
    assert [s.name for s in chain] == ["Decode", "Detect", "Anonymize", "Compose"]
    assert all(s.batch_size == 4 for s in chain)
    decode, detect, anonymize, compose = (s.resources for s in chain)
    assert decode.actors is None and decode.num_cpus == stages.TASK_CPUS  # stateless tasks
    assert detect.actors == (2, 2) and detect.num_gpus == 0
    assert anonymize.actors == (1, 3) and anonymize.num_gpus == 0  # no GPU in this cluster
    assert anonymize.tasks_in_flight == 1 and detect.tasks_in_flight is None  # pipeline.anonymize_tasks_in_flight
    assert compose.actors == compose_pool(job, 16.0)


def test_a_gpu_cluster_gives_each_anonymize_actor_a_gpu_and_detection_can_move_into_it() -> None:
    job = config(detect="gpu_actor", anonymize_actor_resources={"a100": 1})
    chain = job_stages(job, {"CPU": 8.0, "GPU": 2.0})
    assert [s.name for s in chain] == ["Decode", "Anonymize", "Compose"]
    anonymize = chain[1]
    assert anonymize.resources.num_gpus == 1.0 and anonymize.resources.custom == {"a100": 1}
    assert isinstance(anonymize, stages.Anonymize) and anonymize.detect
    fractional = job_stages(config(num_gpus_per_actor=0.5), {"CPU": 8.0, "GPU": 2.0})
    assert fractional[2].resources.num_gpus == 0.5


def test_building_a_stage_loads_nothing_and_setup_loads_its_models() -> None:
    chain = job_stages(config(), {"CPU": 4.0})
    for stage in chain:
        assert not stage.is_set_up
        # What Ray ships to every worker is the configuration, not models.
        assert len(pickle.dumps(stage)) < 20_000, stage.name
    detect, compose = chain[1], chain[3]
    assert isinstance(detect, stages.Detect) and detect.analyzer is None
    assert isinstance(compose, stages.Compose) and not hasattr(compose, "gate")
    detect.ready()
    compose.ready()
    assert detect.analyzer is not None and detect.analyzer.name.startswith("dlib")
    assert compose.gate.recognizer_name  # the gate's recognizer is loaded


class Counting(Stage):
    name = "Counting"

    def __init__(self) -> None:
        super().__init__(Resources(0.5, actors=(1, 2)), batch_size=3)
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1
        super().setup()

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        for task in tasks:
            task.timings["counted"] = float(self.setups)
        return tasks


def batch(n: int) -> pa.Table:
    tasks = [SampleTask("in.tar", "in.tar", i, f"k{i}", [], "") for i in range(n)]
    return pa.table(pack_batch(tasks))


def test_the_worker_sets_a_stage_up_once_then_runs_it_batch_after_batch() -> None:
    worker = StageWorker(Counting())
    for _ in range(3):
        out = unpack_batch(pa.table(worker(batch(2))))
        assert [t.seq for t in out] == [0, 1] and all(t.timings["counted"] == 1.0 for t in out)
    assert isinstance(worker.stage, Counting) and worker.stage.setups == 1


class Recorder:
    """Records what the adapter asks of Ray Data (``map_batches`` keyword arguments)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def map_batches(self, fn: Any, **options: Any) -> Recorder:
        self.calls.append((fn, options))
        return self


def test_one_adapter_maps_any_stage_with_its_resources_and_its_name() -> None:
    ds = Recorder()
    add_stage(ds, Counting())
    worker, options = ds.calls[0]
    assert isinstance(worker, type) and issubclass(worker, StageWorker) and worker.__name__ == "Counting"
    assert options["fn_constructor_args"][0].name == "Counting"
    assert options["compute"].min_size == 1 and options["compute"].max_size == 2
    assert options["batch_size"] == 3 and options["num_cpus"] == 0.5 and options["batch_format"] == "pyarrow"
    assert "num_gpus" not in options and "resources" not in options

    gpu = Counting()
    gpu.resources = Resources(2.0, num_gpus=1.0, custom={"a100": 1}, actors=(2, 2), tasks_in_flight=1)
    add_stage(ds, gpu)
    assert ds.calls[1][1]["num_gpus"] == 1.0 and ds.calls[1][1]["resources"] == {"a100": 1}
    assert ds.calls[1][1]["compute"].max_tasks_in_flight_per_actor == 1
    assert options["compute"].max_tasks_in_flight_per_actor is None  # Ray Data's default

    tasks = Counting()
    tasks.resources = Resources(0.25)  # no pool: stateless tasks, set up where they run
    add_stage(ds, tasks)
    fn, options = ds.calls[2]
    assert fn.__name__ == "Counting" and "compute" not in options
    out = unpack_batch(pa.table(fn(batch(1))))
    assert out[0].timings["counted"] == 1.0


# Rooms from the bottom up: a module may import from its own room and the rooms below it, never above.
RANK = {
    "logs": 0,
    "records": 0,
    "io": 1,
    "config": 2,
    "attributes": 2,  # per-sample attribute prompts from sample metadata
    "layout": 2,
    "imagefiles": 2,
    "samples": 2,
    "images": 3,
    "anonymize": 4,  # the models and the faces
    "audit": 4,  # the evidence and the gate: shares the face code with anonymize
    "pipeline": 5,
    "status": 6,
    "estimate": 6,
    "staging": 6,
    "submit": 6,
    "cli": 7,
}


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raypipe."):
            rooms.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            rooms |= {a.name.split(".")[1] for a in node.names if a.name.startswith("raypipe.")}
    return rooms


@pytest.mark.parametrize("room", sorted(RANK))
def test_no_import_runs_from_a_lower_room_to_a_higher_one(room: str) -> None:
    package = ROOT / "raypipe"
    files = sorted((package / room).rglob("*.py")) if (package / room).is_dir() else [package / f"{room}.py"]
    assert files and all(f.exists() for f in files)
    for path in files:
        for target in imported_rooms(path):
            assert target in RANK, f"{path.relative_to(ROOT)} imports raypipe.{target}, which has no room here"
            assert RANK[target] <= RANK[room], f"{path.relative_to(ROOT)} imports from a higher room: raypipe.{target}"


def test_every_module_has_a_room() -> None:
    package = ROOT / "raypipe"
    found = {p.name if p.is_dir() else p.stem for p in package.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert found - {"__init__", "__pycache__"} == set(RANK)
