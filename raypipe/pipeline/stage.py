"""The stage contract, and the one adapter that puts any stage into a Ray Data plan.

A stage is a plain callable over lists of :class:`SampleTask` (Ray-free, testable on its own). It
declares what it needs, so the plan is built from the stages rather than from a wrapper per stage:

- ``resources``: CPUs, GPUs and custom resources per worker, and the size of its actor pool
  (``actors``); a stage without a pool runs as stateless Ray tasks;
- ``batch_size``: the samples it is handed per call;
- ``setup()``: loads its models, once per worker (once per actor), before the first call.

:func:`add_stage` turns a stage into ``map_batches`` over pyarrow blocks of packed tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from raypipe.logs import quiet_libraries
from raypipe.pipeline.task import SampleTask, pack_batch, unpack_batch


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage holds while it runs."""

    num_cpus: float
    num_gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)  # e.g. {"accelerator_type:A10G": 0.001}
    actors: tuple[int, int] | None = None  # (min, max) actors in its pool; None: stateless tasks
    tasks_in_flight: int | None = None  # batches queued at each actor of the pool; None: Ray Data's default


class Stage:
    """Base of the job's stages. Subclasses set ``name`` and override :meth:`setup` and :meth:`__call__`."""

    name = "stage"

    def __init__(self, resources: Resources, batch_size: int) -> None:
        self.resources = resources
        self.batch_size = batch_size
        self.is_set_up = False
        # False: the Ray worker keeps only the errors of the libraries (raypipe.logs.quiet_libraries)
        # before it sets the stage up; True leaves their logging as it is (pipeline.library_logs).
        self.library_logs = True

    def setup(self) -> None:
        """Load what the stage needs (models); called once per worker before its first batch."""
        self.is_set_up = True

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        raise NotImplementedError

    def ready(self) -> Self:
        """This stage, set up if it was not (for use outside Ray: tests, benchmarks, scripts)."""
        if not self.is_set_up:
            self.setup()
        return self


class StageWorker:
    """The Ray Data callable class for any stage: sets it up once, then runs it batch after batch."""

    def __init__(self, stage: Stage) -> None:
        _quiet_unless_asked(stage)
        stage.setup()
        self.stage = stage

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        return pack_batch(self.stage(unpack_batch(batch)))


def add_stage(ds: Any, stage: Stage) -> Any:
    """``ds.map_batches`` running ``stage`` with the resources and batch size it declares; Ray Data's
    operator and progress bar carry the stage's name."""
    r = stage.resources
    options: dict[str, Any] = {"batch_format": "pyarrow", "batch_size": stage.batch_size, "num_cpus": r.num_cpus}
    if r.num_gpus:
        options["num_gpus"] = r.num_gpus
    if r.custom:
        options["resources"] = dict(r.custom)
    if r.actors is None:

        def task(batch: Any) -> dict[str, list[Any]]:  # a stateless task: set up where it runs
            if not stage.is_set_up:  # once per worker process, not per batch (setLevel walks every logger)
                _quiet_unless_asked(stage)
            return pack_batch(stage.ready()(unpack_batch(batch)))

        task.__name__ = task.__qualname__ = stage.name
        return ds.map_batches(task, **options)
    from ray.data import ActorPoolStrategy

    low, high = r.actors
    worker = type(stage.name, (StageWorker,), {"__module__": __name__})
    pool = ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=r.tasks_in_flight)
    return ds.map_batches(worker, fn_constructor_args=(stage,), compute=pool, **options)


def _quiet_unless_asked(stage: Stage) -> None:
    if not stage.library_logs:
        quiet_libraries()
