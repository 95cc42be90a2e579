"""``run(config) -> RunSummary``: the Ray Data plan of the job (DESIGN.md, "Data flow").

```
read (ShardDatasource: one task per shard) -> decode (CPU tasks) -> detect (CPU actors; or inside
  the GPU actors) -> anonymize (GPU actor pool, models loaded once per actor) -> compose (CPU actors)
  -> write (FragmentSink: fragments; shards finalized as they complete, leftovers at the end)
```

Each stage declares its resources and loads its models in ``setup`` (:mod:`raypipe.pipeline.stage`);
:func:`job_stages` sizes them for the cluster, and one adapter puts each into the plan.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

import raypipe
from raypipe.config import ConfigError, JobConfig
from raypipe.io.publish import publish_bytes
from raypipe.io.storage import redact, redact_all
from raypipe.layout import CONFIG_FILE, RUNS_DIR, OutputLayout, tally_from
from raypipe.logs import get_logger, quiet_libraries
from raypipe.pipeline import stages
from raypipe.pipeline.commit import RunInfo
from raypipe.pipeline.plan import make_plan
from raypipe.pipeline.stage import Resources, Stage, add_stage
from raypipe.pipeline.stages import TASK_CPUS

log = get_logger(__name__)

COMPOSE_CPUS = stages.COMPOSE_RESOURCES.num_cpus
FRAGMENT_KEY_PURPOSE = "fragments and markers"  # what the run's derived key authenticates


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
    anchor: str | None = None  # where the run's signed checkpoint went (audit.anchor), None if nowhere
    covered_by: int | None = None  # sequence of the signed manifest that covers OUTPUT after the run
    faces: dict[str, int] = field(default_factory=dict)  # faces per status in the shards this run finished
    faces_retried: int = 0  # of those, faces anonymized again after failing the gate

    @property
    def samples_total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """Every shard finished and no sample failed (quarantined samples are a policy outcome)."""
        return not self.incomplete_shards and self.counts.get("failed", 0) == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def connect(config: JobConfig) -> None:
    """Join the cluster named by ``pipeline.address`` or ``RAY_ADDRESS``, or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    from raypipe.pipeline.faults import fault_env

    hooks = fault_env()  # fault-injection test hooks reach the workers this way; empty in production
    runtime_env = {"env_vars": hooks} if hooks else None
    ray.init(address=config.pipeline.address, log_to_driver=True, configure_logging=False, runtime_env=runtime_env)
    import ray.data  # Ray Data sets up its loggers on import: quiet them after that

    if not config.pipeline.library_logs:
        quiet_libraries()
    log.info("Ray cluster resources: %s", ray.cluster_resources())


def detects_in_gpu_actor(config: JobConfig) -> bool:
    """Whether detection runs inside the anonymize actors (``pipeline.detect: gpu_actor``); a classic
    method has no such actor, so it always detects in the Detect stage."""
    return config.pipeline.detect == "gpu_actor" and not config.method.classic


def compose_pool(config: JobConfig, cluster_cpus: float) -> tuple[int, int]:
    """(min, max) compose actors. A number in ``pipeline.compose_actors`` is both; ``auto`` starts one
    and lets Ray Data add actors while batches queue for them, up to the CPUs that the other pools and
    the read and write tasks leave (one CPU kept for those tasks), so the gate never limits the GPUs
    and the job can never wait for a CPU that an idle actor holds."""
    p = config.pipeline
    if p.compose_actors != "auto":
        return int(p.compose_actors), int(p.compose_actors)
    anonymizing = 0.0 if config.method.classic else p.anonymize_actors_max * p.num_cpus_per_actor
    held = anonymizing + (0 if detects_in_gpu_actor(config) else p.detect_actors * stages.DETECT_RESOURCES.num_cpus)
    room = cluster_cpus - held - 1.0
    return 1, max(1, int(room // COMPOSE_CPUS))


def job_stages(config: JobConfig, cluster: dict[str, float]) -> list[Stage]:
    """The job's stages after the read, in order, each with the resources, pool and batch size it runs
    with on a cluster whose resource totals are ``cluster``."""
    p, batch = config.pipeline, config.pipeline.batch_size
    detect_in_actor = detects_in_gpu_actor(config)
    chain: list[Stage] = [stages.Decode(config.limits, stages.DECODE_RESOURCES, batch)]
    if not detect_in_actor:
        detect = dataclasses.replace(stages.DETECT_RESOURCES, actors=(p.detect_actors, p.detect_actors))
        chain.append(stages.Detect(config.models, config.method, config.limits, detect, batch))
    gpus = p.num_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    pool = (p.anonymize_actors_min, p.anonymize_actors_max)
    anonymize = Resources(
        p.num_cpus_per_actor,
        gpus,
        dict(p.anonymize_actor_resources or {}),
        actors=pool,
        tasks_in_flight=p.anonymize_tasks_in_flight,
    )
    if not config.method.classic:  # a classic method hides faces in Compose, on the CPU
        chain.append(
            stages.Anonymize(
                config.models, config.method, config.limits, detect_in_actor, config.audit, anonymize, batch
            )
        )
    compose = dataclasses.replace(stages.COMPOSE_RESOURCES, actors=compose_pool(config, float(cluster.get("CPU", 1))))
    chain.append(
        stages.Compose(
            config.audit,
            config.models.analyzer,
            config.utility,
            config.limits,
            config.storage,
            compose,
            batch,
            jpeg_quality=config.encode.jpeg_quality,
            method=config.method,
        )
    )
    for stage in chain:
        stage.library_logs = p.library_logs
    return chain


def build_dataset(config: JobConfig, pending: list[Any]) -> Any:
    """The Ray Data plan up to the write: read the pending shards, then run every stage."""
    import ray

    from raypipe.pipeline.source import ShardDatasource

    ray.data.DataContext.get_current().enable_progress_bars = config.pipeline.progress
    ds = ray.data.read_datasource(ShardDatasource(pending, config.storage, config.limits), num_cpus=TASK_CPUS)
    for stage in job_stages(config, ray.cluster_resources()):
        ds = add_stage(ds, stage)
    return ds


def run(config: JobConfig, overwrite: bool = False) -> RunSummary:
    """Anonymize every input shard into OUTPUT; resumable: rerun the same command after a crash.

    The run holds OUTPUT's lease from before planning to after its manifest, so no second driver can
    write there meanwhile.
    """
    from raypipe.pipeline.lease import lease

    started = time.time()
    key = signing_key(config)
    uris = config.input_shards()  # a bad INPUT stops here: OUTPUT untouched
    check_inputs_fit(config, uris)
    layout = OutputLayout(config.output, config.storage)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]
    with lease(layout, run_id, config.pipeline.lease_ttl_s) as held:
        return _run_holding_lease(config, layout, key, run_id, started, overwrite, held, uris)


def check_inputs_fit(config: JobConfig, uris: list[str]) -> None:
    """Refuse settings that the kind of input cannot honour, before OUTPUT is touched."""
    from raypipe.io.filetrees import is_files_group
    from raypipe.io.tables import is_table_shard

    groups = [uri for uri in uris if is_files_group(uri)]
    if groups and len(groups) < len(uris):
        other = next(uri for uri in uris if not is_files_group(uri))
        raise ConfigError(
            f"input: {redact(other)} is a shard and {redact(groups[0])} a folder of files; a tree of files is"
            " mirrored to OUTPUT, so one job reads either shards or trees of files: run them to separate OUTPUTs"
        )
    source = config.method.attribute_source
    if source is None:
        return
    tables = [uri for uri in uris if is_table_shard(uri)]
    tars = [uri for uri in uris if not is_table_shard(uri)]
    if source.column is None and tables:
        raise ConfigError(
            f"method.attribute_from: {source} reads a JSON member of each WebDataset sample, and {redact(tables[0])} "
            "is a Parquet table (its rows have no members of that kind); use column:NAME for a table's column"
        )
    if source.column is not None and tars:
        raise ConfigError(
            f"method.attribute_from: {source} reads a column of each Parquet table, and {redact(tars[0])} is not a"
            " table; use MEMBER:FIELD (json:prompt) for a sample's JSON member"
        )


def _run_holding_lease(
    config: JobConfig,
    layout: OutputLayout,
    key: Any,
    run_id: str,
    started: float,
    overwrite: bool,
    held: Any,
    uris: list[str],
) -> RunSummary:
    previous = previous_manifest(layout, key)
    _check_not_rolled_back(config, previous, key)
    secret = key.derive(FRAGMENT_KEY_PURPOSE) if key is not None else None
    plan = make_plan(config, layout, previous, overwrite=overwrite, secret=secret, uris=uris)
    publish_bytes(layout.fs, layout.state(CONFIG_FILE), yaml.safe_dump(_resolved(config), sort_keys=False).encode())
    run_info = RunInfo(
        config_hash=plan.config_hash,
        code_version=raypipe.__version__,
        method=dataclasses.asdict(config.method),
        quarantine=OutputLayout(config.audit.quarantine_output, config.storage)
        if config.audit.quarantine_output
        else None,
        fragment_key=secret,
    )
    processed, produced = _process(config, layout, plan, run_info) if plan.pending else (0, {})
    summary = RunSummary(
        output=redact(layout.root),
        run_id=run_id,
        shards_total=len(plan.names),
        shards_done=0,
        shards_skipped=len(plan.done),
        samples_processed=processed,
        faces=dict(sorted(sum((Counter(m.get("face_counts") or {}) for m in produced.values()), Counter()).items())),
        faces_retried=sum(int(marker.get("faces_retried") or 0) for marker in produced.values()),
    )
    if key is None:
        log.warning("no audit key (RAYPIPE_AUDIT_KEY or audit.key_file): the run manifest was not signed or written")
        _tally(summary, plan.names, layout.read_marker)
    else:
        from raypipe.audit.manifest import entry_from_marker

        added = plan.unsigned | {name: entry_from_marker(marker) for name, marker in produced.items()}
        current = previous if not plan.overwrite else None
        if added or plan.overwrite:
            held.check()  # LeaseLostError: another run holds OUTPUT now; publish nothing
            current = write_run_manifest(layout, config, plan, added, produced, previous, run_id, started, key)
            summary.manifest = int(current["sequence"])
            summary.anchor = _anchor(config, layout, current, key)
        else:
            log.info("nothing new was produced: no new manifest (the current one still covers OUTPUT)")
        summary.covered_by = int(current["sequence"]) if current else None
        _tally(summary, plan.names, dict((current or {}).get("shards", {})).get)
    summary.elapsed_s = round(time.time() - started, 3)
    record = {
        "run_id": run_id,
        "started": started,
        "finished": time.time(),
        "config_hash": plan.config_hash,
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    publish_bytes(
        layout.fs,
        layout.state(f"{RUNS_DIR}/{run_id}.json"),
        json.dumps(record | summary.to_dict(), indent=2).encode(),
    )
    return summary


def _process(
    config: JobConfig, layout: OutputLayout, plan: Any, run_info: RunInfo
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run the Ray Data job over the pending shards; returns samples processed and the markers of the
    shards it finalized (their evidence as written)."""
    import ray

    from raypipe.pipeline.progress import ProgressLine, progress_log
    from raypipe.pipeline.sink import FragmentSink, make_tracker
    from raypipe.pipeline.watchdog import stall_watchdog, tracker_progress

    connect(config)
    tracker = make_tracker({w.name: (w.committed, None) for w in plan.pending})
    sink = FragmentSink(layout, run_info, tracker, {w.name: w.uri for w in plan.pending})
    ds = build_dataset(config, plan.pending)
    line = ProgressLine(len(plan.pending), already=sum(len(w.committed) for w in plan.pending))
    with (
        stall_watchdog(tracker, config.pipeline.stall_timeout_s),  # StalledJobError if nothing commits
        progress_log(lambda: tracker_progress(tracker), line),  # samples, rate and ETA in the log
    ):
        ds.write_datasink(sink, ray_remote_args={"num_cpus": TASK_CPUS})
    processed = int(ray.get(tracker.progress.remote())["samples"])
    return processed, sink.produced


def previous_manifest(layout: OutputLayout, key: Any) -> dict[str, Any] | None:
    """OUTPUT's current manifest, verified with ``key``; None when there is none.

    Without a key a run cannot extend signed evidence, so an OUTPUT that has a manifest refuses it.
    """
    from raypipe.audit.manifest import manifest_path, read_signed_manifest
    from raypipe.config import ConfigError
    from raypipe.io.publish import exists

    if key is None:
        if exists(layout.fs, manifest_path(layout)):
            raise ConfigError(
                f"output: {redact(layout.root)} holds a signed manifest; give the run the audit key "
                "(RAYPIPE_AUDIT_KEY or audit.key_file) so that it can extend it"
            )
        return None
    return read_signed_manifest(layout, key)


def _check_not_rolled_back(config: JobConfig, previous: dict[str, Any] | None, key: Any) -> None:
    """Refuse to extend an OUTPUT that is older than the newest checkpoint the anchor holds of it."""
    if config.audit.anchor is None or previous is None or key is None:
        return
    from raypipe.audit.anchor import find_checkpoints
    from raypipe.config import ConfigError

    found = find_checkpoints(config.audit.anchor, str(previous.get("chain_id")), config.storage, key)
    for uri, _, reason in found.invalid:
        log.warning("anchor: %s is not a valid checkpoint of this output (%s); ignored", redact(uri), reason)
    if found.newest is None:
        return
    uri, checkpoint = found.newest
    newest = int(checkpoint["sequence"])
    if newest > int(previous["sequence"]):
        raise ConfigError(
            f"output: {redact(config.output)} is at manifest {previous['sequence']}, but the anchor holds "
            f"checkpoint {newest} of it ({redact(uri)}): OUTPUT was rolled back; restore it, or anonymize into "
            "a new OUTPUT"
        )


def _anchor(config: JobConfig, layout: OutputLayout, manifest: dict[str, Any], key: Any) -> str | None:
    """Write the run's signed checkpoint to ``audit.anchor``; its location, or None without an anchor."""
    if config.audit.anchor is None:
        log.warning(
            "no audit.anchor: verify can detect changes inside OUTPUT, but not a rollback of all of it "
            "to an earlier signed state (see README, 'What verify proves')"
        )
        return None
    from raypipe.audit.anchor import write_checkpoint

    return write_checkpoint(config.audit.anchor, manifest, key, config.storage, layout.root)


def _tally(summary: RunSummary, names: list[str], lookup: Any) -> None:
    """Done and incomplete shards and samples per status, from the manifest's entries or the markers."""
    found = tally_from(names, lookup)
    summary.shards_done, summary.counts, summary.incomplete_shards = len(found.done), found.counts, found.incomplete


def signing_key(config: JobConfig) -> Any:
    """The audit signing key, checked before any work starts; None when none is configured at all.

    Raises :class:`raypipe.audit.signing.AuditKeyError` for a key that cannot sign (an Ed25519 public
    key): found only at the end, it would cost the whole run and leave it without a manifest.
    """
    import os

    from raypipe.audit.signing import KEY_ENV, AuditKeyError, load_key

    if config.audit.key_file is None and not os.environ.get(KEY_ENV):
        return None
    key = load_key(config.audit.key_file)
    if not key.can_sign:
        raise AuditKeyError(
            f"the audit key from {key.source} is an Ed25519 public key: it can verify a manifest but not sign "
            "one. Give the job the private key (audit.key_file, --key-file or RAYPIPE_AUDIT_KEY); keep the "
            "public key for `raypipe audit verify`"
        )
    return key


def write_run_manifest(
    layout: OutputLayout,
    config: JobConfig,
    plan: Any,
    added: dict[str, dict[str, Any]],
    produced: dict[str, dict[str, Any]],
    previous: dict[str, Any] | None,
    run_id: str,
    started: float,
    key: Any,
) -> dict[str, Any]:
    """Sign and publish the manifest that adds this run's shards to the previous signed one."""
    from raypipe.audit.manifest import build_manifest, write_manifest
    from raypipe.audit.reid import non_face_score

    run_info = {
        "run_id": run_id,
        "config_hash": plan.config_hash,
        "code_version": raypipe.__version__,
        "started": started,
        "finished": time.time(),
        "method": dataclasses.asdict(config.method),
        "models": _model_ids(config),
        "weight_hashes": _weight_hashes(produced),
        "reid": {
            "recognizer": config.audit.recognizer,
            "metric": "euclidean",
            "threshold": config.audit.reid_threshold,
            "non_face_score": non_face_score(config.models.analyzer, config.audit.non_face_score),
            "min_face_px": config.audit.min_face_px,
            "retries": config.audit.retries,
            "retry_guidance_step": config.audit.retry_guidance_step,
            "fallback": config.audit.fallback,
        },
    }
    reason = (
        "--overwrite: earlier results (another configuration, or a changed input) were deleted"
        if plan.overwrite
        else None
    )
    return write_manifest(layout, build_manifest(previous, added, run_info, overwrite=reason), key)


def _model_ids(config: JobConfig) -> dict[str, Any]:
    m = config.models
    ids: dict[str, Any] = {"preset": m.preset, "analyzer": m.analyzer}
    if m.preset == "sdxl":
        ids |= {"sdxl": redact(m.sdxl), "ip_adapter": f"{redact(m.ip_adapter)}/{m.ip_adapter_weight_name}"}
        ids |= {"vae": redact(m.vae)} if m.vae else {}
    if m.analyzer == "insightface":
        ids["insightface"] = redact(m.insightface)
    return ids


def _weight_hashes(produced: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The weight hashes the GPU actors recorded, from the markers of the shards this run finalized."""
    for name in sorted(produced):
        value = produced[name].get("weight_hashes")
        if value:
            return dict(json.loads(value))
    return {}


def _resolved(config: JobConfig) -> dict[str, Any]:
    # Every URI-valued field (input, output, pipeline.address, models.*, audit.quarantine_output,
    # storage.endpoint_url, ...) is stored without userinfo or query credentials.
    resolved: dict[str, Any] = redact_all(dataclasses.asdict(config))
    return resolved
