"""``run(config) -> RunSummary``: the Ray Data plan of the job (DESIGN.md, "Data flow").

```
read (one task per shard) -> decode (CPU tasks) -> detect (CPU actors; or inside the GPU actors)
  -> anonymize (GPU actor pool, models loaded once per actor) -> compose (CPU tasks)
  -> write (fragments; shards finalized as they complete)
```
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml

import raypipe
from raypipe.config import AuditConfig, JobConfig, LimitsConfig, MethodConfig, ModelsConfig
from raypipe.io.publish import publish_bytes
from raypipe.io.storage import redact
from raypipe.layout import OutputLayout
from raypipe.logs import get_logger
from raypipe.pipeline.commit import RunInfo
from raypipe.pipeline.plan import CONFIG_FILE, make_plan
from raypipe.pipeline.task import over_tasks, pack_batch, unpack_batch

log = get_logger(__name__)

TASK_CPUS = 0.25


@dataclass
class RunSummary:
    output: str
    run_id: str
    shards_total: int
    shards_done: int
    shards_skipped: int  # already complete before this run
    samples_processed: int  # samples that went through the stages in this run
    counts: dict[str, int] = field(default_factory=dict)  # per status, over every completed shard
    incomplete_shards: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    manifest: int | None = None  # sequence number of the signed manifest written, None if none

    @property
    def samples_total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """Every shard finished and no sample failed (quarantined samples are a policy outcome)."""
        return not self.incomplete_shards and self.counts.get("failed", 0) == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DetectActor:
    """Ray Data actor wrapping :class:`raypipe.pipeline.stages.Detect`."""

    def __init__(self, models: ModelsConfig, method: MethodConfig, limits: LimitsConfig) -> None:
        from raypipe.pipeline.stages import Detect

        self.stage = Detect(models, method, limits)

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        return pack_batch(self.stage(unpack_batch(batch)))


class AnonymizeActor:
    """Ray Data actor wrapping :class:`raypipe.pipeline.stages.Anonymize` (loads the models once)."""

    def __init__(self, models: ModelsConfig, method: MethodConfig, limits: LimitsConfig, detect: bool) -> None:
        import ray

        from raypipe.pipeline.stages import Anonymize

        node = ray.get_runtime_context().get_node_id()
        self.stage = Anonymize(models, method, limits, detect=detect, node=node)

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        return pack_batch(self.stage(unpack_batch(batch)))


class ComposeActor:
    """Ray Data actor wrapping :class:`raypipe.pipeline.stages.Compose` (loads the gate's recognizer once)."""

    def __init__(self, audit: AuditConfig, analyzer: str) -> None:
        from raypipe.pipeline.stages import Compose

        self.stage = Compose(audit, analyzer)

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        return pack_batch(self.stage(unpack_batch(batch)))


def connect(config: JobConfig) -> None:
    """Join the cluster named by ``pipeline.address`` or ``RAY_ADDRESS``, or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    from raypipe.pipeline.faults import fault_env

    hooks = fault_env()  # fault-injection test hooks reach the workers this way; empty in production
    runtime_env = {"env_vars": hooks} if hooks else None
    ray.init(address=config.pipeline.address, log_to_driver=True, configure_logging=False, runtime_env=runtime_env)
    log.info("Ray cluster resources: %s", ray.cluster_resources())


def gpus_per_actor(config: JobConfig) -> float:
    import ray

    if config.pipeline.num_gpus_per_actor is not None:
        return config.pipeline.num_gpus_per_actor
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_dataset(config: JobConfig, plan_pending: list[Any], layout: OutputLayout, run: RunInfo, tracker: Any) -> Any:
    import ray
    from ray.data import ActorPoolStrategy

    from raypipe.pipeline.read import make_datasource
    from raypipe.pipeline.sink import make_datasink
    from raypipe.pipeline.stages import Decode

    p = config.pipeline
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = p.progress
    common = {"batch_format": "pyarrow", "batch_size": p.batch_size}
    # Light tasks ask for a quarter CPU: the actor pools must never take every CPU, or the read and
    # write tasks could not be scheduled and the job would wait forever.
    ds = ray.data.read_datasource(make_datasource(plan_pending, config.storage, config.limits), num_cpus=TASK_CPUS)
    ds = ds.map_batches(over_tasks(Decode(config.limits)), num_cpus=TASK_CPUS, **common)
    detect_in_actor = p.detect == "gpu_actor"
    if not detect_in_actor:
        ds = ds.map_batches(
            DetectActor,
            fn_constructor_args=(config.models, config.method, config.limits),
            compute=ActorPoolStrategy(size=p.detect_actors),
            num_cpus=0.5,
            **common,
        )
    ds = ds.map_batches(
        AnonymizeActor,
        fn_constructor_args=(config.models, config.method, config.limits, detect_in_actor),
        compute=ActorPoolStrategy(min_size=p.anonymize_actors_min, max_size=p.anonymize_actors_max),
        num_gpus=gpus_per_actor(config),
        num_cpus=p.num_cpus_per_actor,
        resources=p.anonymize_actor_resources,
        **common,
    )
    ds = ds.map_batches(
        ComposeActor,
        fn_constructor_args=(config.audit, config.models.analyzer),
        compute=ActorPoolStrategy(size=p.compose_actors),
        num_cpus=0.5,
        **common,
    )
    return ds, make_datasink(layout, run, tracker)


def run(config: JobConfig, overwrite: bool = False) -> RunSummary:
    """Anonymize every input shard into OUTPUT; resumable: rerun the same command after a crash."""
    import ray

    from raypipe.pipeline.sink import complete_unfinalized, make_tracker
    from raypipe.pipeline.watchdog import stall_watchdog

    started = time.time()
    key = signing_key(config)
    layout = OutputLayout(config.output, config.storage)
    plan = make_plan(config, layout, overwrite=overwrite)
    publish_bytes(layout.fs, layout.state(CONFIG_FILE), yaml.safe_dump(_resolved(config), sort_keys=False).encode())
    run_info = RunInfo(
        config_hash=plan.config_hash,
        code_version=raypipe.__version__,
        method=dataclasses.asdict(config.method),
        quarantine=OutputLayout(config.audit.quarantine_output, config.storage)
        if config.audit.quarantine_output
        else None,
    )
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]
    processed = 0
    if plan.pending:
        connect(config)
        committed: dict[str, tuple[set[int], int | None]] = {w.name: (set(w.committed), None) for w in plan.pending}
        tracker = make_tracker(committed)
        ds, sink = build_dataset(config, plan.pending, layout, run_info, tracker)
        with stall_watchdog(tracker, config.pipeline.stall_timeout_s):  # StalledJobError if nothing commits
            ds.write_datasink(sink, ray_remote_args={"num_cpus": TASK_CPUS})
        processed = ray.get(tracker.progress.remote())["samples"]
        # A shard whose last fragment was committed but not finalized (a write task died in between).
        leftovers = [w.name for w in plan.pending if layout.read_marker(w.name) is None]
        if leftovers:
            ray.get(ray.remote(num_cpus=0.5)(complete_unfinalized).remote(layout, leftovers, run_info.quarantine))
    summary = summarize(layout, plan.names, len(plan.done), processed, run_id, time.time() - started)
    if key is not None:
        summary.manifest = write_run_manifest(layout, config, plan, summary, started, key)
    else:
        log.warning("no audit key (RAYPIPE_AUDIT_KEY or audit.key_file): the run manifest was not signed or written")
    record = {
        "run_id": run_id,
        "started": started,
        "finished": time.time(),
        "config_hash": plan.config_hash,
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    publish_bytes(
        layout.fs,
        layout.state(f"runs/{run_id}.json"),
        json.dumps(record | summary.to_dict(), indent=2).encode(),
    )
    return summary


def signing_key(config: JobConfig) -> Any:
    """The audit signing key, checked before any work starts; None when none is configured at all."""
    import os

    from raypipe.audit.signing import KEY_ENV, load_key

    if config.audit.key_file is None and not os.environ.get(KEY_ENV):
        return None
    return load_key(config.audit.key_file)


def write_run_manifest(
    layout: OutputLayout, config: JobConfig, plan: Any, summary: RunSummary, started: float, key: Any
) -> int:
    """Sign and publish the manifest over every completed shard, chained to the previous one."""
    from raypipe.audit.manifest import build_manifest, write_manifest

    done = [name for name in plan.names if name not in summary.incomplete_shards]
    run_info = {
        "run_id": summary.run_id,
        "config_hash": plan.config_hash,
        "code_version": raypipe.__version__,
        "started": started,
        "finished": time.time(),
        "method": dataclasses.asdict(config.method),
        "models": _model_ids(config),
        "weight_hashes": _weight_hashes(layout, done),
        "reid": {"recognizer": config.audit.recognizer, "threshold": config.audit.reid_threshold},
    }
    signed = write_manifest(layout, build_manifest(layout, done, run_info), key)
    return int(signed["sequence"])


def _model_ids(config: JobConfig) -> dict[str, Any]:
    m = config.models
    ids: dict[str, Any] = {"preset": m.preset, "analyzer": m.analyzer}
    if m.preset == "sdxl":
        ids |= {"sdxl": redact(m.sdxl), "ip_adapter": f"{redact(m.ip_adapter)}/{m.ip_adapter_weight_name}"}
        ids |= {"vae": redact(m.vae)} if m.vae else {}
    if m.analyzer == "insightface":
        ids["insightface"] = redact(m.insightface)
    return ids


def _weight_hashes(layout: OutputLayout, shards: list[str]) -> dict[str, str]:
    """The weight hashes the GPU actors recorded (read from the audit records, first one found)."""
    import io

    import pyarrow.parquet as pq

    from raypipe.io.publish import read_bytes

    for name in shards:
        table = pq.read_table(io.BytesIO(read_bytes(layout.fs, layout.audit(name))), columns=["weight_hashes"])
        for value in table.column("weight_hashes").to_pylist():
            if value and value != "{}":
                return dict(json.loads(value))
    return {}


def summarize(
    layout: OutputLayout, names: list[str], skipped: int, processed: int, run_id: str, elapsed: float
) -> RunSummary:
    from raypipe.status import tally

    markers = tally(layout, names)
    return RunSummary(
        output=redact(layout.root),
        run_id=run_id,
        shards_total=len(names),
        shards_done=len(markers.done),
        shards_skipped=skipped,
        samples_processed=processed,
        counts=markers.counts,
        incomplete_shards=markers.incomplete,
        elapsed_s=round(elapsed, 3),
    )


def _resolved(config: JobConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["input"] = [redact(i) for i in config.input]
    data["output"] = redact(config.output)
    return data
