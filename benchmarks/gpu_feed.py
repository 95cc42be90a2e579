"""Do the GPU actors wait for work? The whole job with a stand-in anonymizer that holds its "GPU" for a
fixed time per face, and how busy each anonymize actor was.

The job is raypipe's real ``run(config)`` (read shards, decode, detect with dlib's HOG detector, anonymize,
compose with the re-identification gate on, write fragments, finalize shards, signed manifest) on local
WebDataset shards of real photos with a realistic mix of faces per image (the photos of
``benchmarks/unet_fill.py``: 0, 1, 3 or 6 faces as dlib finds them). Only the anonymizer is replaced:

- **The stand-in** (:class:`SleepingAnonymizer`) is a subclass of the job's ``Anonymize`` stage
  (``raypipe.pipeline.stages``): same constructor, resources, pool and batch size as the job gives the
  real one, but its ``setup`` loads no model and its call sets ``image.outputs`` per face and drops the
  faces' GPU inputs as the real stage does. Per batch it holds the "GPU" for ``c`` seconds per face,
  with ``time.sleep``: this machine has no GPU, and a sleeping actor is the honest model of one whose
  GPU is busy (it takes no CPU from the stages that feed it, as a GPU kernel would not). Its output
  crop for each face is the aligned crop with the face box masked (``raypipe.anonymize.classic.obscure``),
  so the real gate in the compose stage checks every face (recognizer distance, missed-face search) and
  releases it only if it passes. The class lives in this script; cloudpickle ships it to the Ray
  workers, and each call appends its busy interval to a log, which also proves the stand-in really ran
  in the workers.
- **Busy fraction** of an actor: seconds it held the GPU / (end of the job's last anonymize batch, on any
  actor, - the start of this actor's first batch): the share of its life in the job that it worked.
  ``busy_until_last_start`` uses the start of the job's last anonymize batch as the end instead: idle
  time after it is the drain (no batch was left to start anywhere), idle time before it is waiting for
  work while more was still coming. The pool's figure is total held seconds over the summed windows.
- **Time to first anonymization**: from ``run()`` being called (planning, actor start-up included; Ray is
  started before) to the stand-in's first hold, and from the first decode (the first block of samples
  read) to it.
- **Baseline in the same run**: the job's own CPU stages (decode, detect, compose with the gate) run
  serially in this process on every photo of the mix, weighted as the input draws them: CPU seconds per
  sample ``s``. With ``K`` cores the CPUs can feed at most ``K / s`` samples per second, so the best busy
  fraction the machine allows is ``min(1, K / s * c * f / n)`` (``f`` faces per sample, ``n`` actors);
  each row prints the measured fraction against that bound.

The input of each setting holds about ``--gpu-seconds`` of GPU work per actor (faces x c / n), in whole
shards. Pools, batch size and Ray Data options are set through ``JobConfig.pipeline`` and
``DataContext``. Start Ray only in a loopback-only network namespace here:

    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh env RAY_AUTH_MODE=disabled \\
        .venv/bin/python benchmarks/gpu_feed.py                 # c 0.2 and 2 s x 1..4 actors
    ... benchmarks/gpu_feed.py --quick                          # one small setting (tests)
    ... benchmarks/gpu_feed.py --costs 0.2 --actors 4 --max-tasks-in-flight 1 --out ...   # one variant
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.photos import real_photos  # noqa: E402
from benchmarks.report import write_report  # noqa: E402
from raypipe.pipeline.stages import Anonymize  # noqa: E402

STAND_IN_DEVICE = "stand-in: time.sleep per face (no GPU)"


# --------------------------------------------------------------------------- input


def jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def draw_samples(names: list[str], count: int, seed: int) -> list[str]:
    """Which photo each sample holds: drawn uniformly (seeded) from the mix."""
    rng = random.Random(seed)
    return [rng.choice(sorted(names)) for _ in range(count)]


def write_shards(folder: Path, drawn: list[str], encoded: dict[str, bytes], per_shard: int) -> list[Path]:
    """WebDataset shards of ``per_shard`` samples: a JPEG photo, a JSON record and a caption each."""
    from raypipe.io.tars import Sample, write_tar

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(math.ceil(len(drawn) / per_shard)):
        samples = []
        for i, name in enumerate(drawn[s * per_shard : (s + 1) * per_shard]):
            key = f"{s:05d}{i:05d}"
            members = [
                (f"{key}.jpg", encoded[name]),
                (f"{key}.json", json.dumps({"photo": name, "shard": s, "index": i}).encode()),
                (f"{key}.txt", f"{name}, sample {i} of shard {s}".encode()),
            ]
            samples.append(Sample(key=key, members=members))
        path = folder / f"part-{s:05d}.tar"
        with open(path, "wb") as fh:
            write_tar(samples, fh)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- the stand-in anonymizer


def masked_outputs(tasks: list[Any]) -> int:
    """Set every image's ``outputs``: the aligned crop with the face box masked, for each face that can be
    anonymized (None for the others, as the real anonymizer gives); returns the faces done."""
    from raypipe.anonymize.classic import obscure
    from raypipe.anonymize.pipeline import crop_box

    done = 0
    for task in tasks:
        if not task.pending:
            continue
        for image in task.images:
            image.outputs = [obscure(f.crop, [crop_box(f)], "mask") if f.ready else None for f in image.faces]
            done += sum(1 for f in image.faces if f.ready)
    return done


class SleepingAnonymizer(Anonymize):
    """Stands in for the job's ``Anonymize`` stage: holds its "GPU" for ``cost_s`` per face
    (``time.sleep``), returns masked crops, and logs each call's interval to ``log_dir``.

    Configured by subclassing (:func:`stand_in`); the job builds it as it builds the real stage.
    """

    cost_s: float = 0.0
    log_dir: str = ""

    def setup(self) -> None:
        if self.detect:
            raise ValueError("the stand-in anonymizer does not detect: run with pipeline.detect: cpu")
        self.actor = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = Path(self.log_dir) / f"anonymize-{self.actor}.jsonl"
        self.is_set_up = True

    def __call__(self, tasks: list[Any]) -> list[Any]:
        called = time.time()
        faces = sum(1 for t in tasks if t.pending for image in t.images for f in image.faces if f.ready)
        held = time.time()
        masked_outputs(tasks)  # what the GPU would return, made while it is held
        time.sleep(max(0.0, held + self.cost_s * faces - time.time()))
        released = time.time()
        for task in tasks:
            for image in task.images:
                for face in image.faces:
                    face.drop_inputs()  # as the real stage: crops and embeddings do not travel on
            if task.pending:
                task.timings["anonymize"] = round((released - held) / max(len(tasks), 1), 6)
            task.provenance["device"] = STAND_IN_DEVICE
        record = {"actor": self.actor, "call": [called, time.time()], "hold": [held, released]}
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record | {"faces": faces, "samples": len(tasks)}) + "\n")
        return tasks


def stand_in(cost_s: float, log_dir: Path) -> type:
    """A :class:`SleepingAnonymizer` holding ``cost_s`` per face and logging to ``log_dir``."""
    return type("SleepingAnonymizer", (SleepingAnonymizer,), {"cost_s": cost_s, "log_dir": str(log_dir)})


def first_decode_probe(log_dir: Path) -> type | None:
    """The job's Decode stage, logging when each call starts (the first block of samples was read);
    None if the stage is no longer ``raypipe.pipeline.stages.Decode``."""
    from raypipe.pipeline import stages

    base = getattr(stages, "Decode", None)
    if base is None:
        return None

    def __call__(self: Any, tasks: list[Any]) -> list[Any]:
        with open(Path(self.probe_dir) / f"decode-{os.getpid()}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"start": time.time(), "samples": len(tasks)}) + "\n")
        return base.__call__(self, tasks)

    return type("LoggedDecode", (base,), {"__call__": __call__, "probe_dir": str(log_dir)})


# --------------------------------------------------------------------------- the serial baseline


def serial_costs(photos: dict[str, np.ndarray], encoded: dict[str, bytes], config: Any) -> dict[str, Any]:
    """CPU seconds of the job's own decode, detect and compose (gate on) per photo, one process, warm;
    and the faces the job's detector finds and the gate's verdicts on the stand-in's masked crops."""
    from raypipe.pipeline.stages import Compose, Decode, Detect
    from raypipe.pipeline.task import SampleTask

    decode = Decode(config.limits).ready()
    detect = Detect(config.models, config.method, config.limits).ready()
    compose = Compose(config.audit, config.models.analyzer, config.utility).ready()

    def one(name: str) -> tuple[SampleTask, int, dict[str, float]]:
        task = SampleTask(
            shard="serial", shard_name="serial", seq=0, key=name, members=[("x.jpg", encoded[name])], input_sha256=""
        )
        seconds, faces = {}, 0
        for step, stage in (("decode", decode), ("detect", detect), ("outputs", masked_outputs), ("compose", compose)):
            if step == "compose":
                faces = sum(len(image.faces) for image in task.images)
            started = time.perf_counter()
            stage([task])
            seconds[step] = time.perf_counter() - started
        return task, faces, seconds

    one("astronaut")  # warm-up: first calls load code paths and allocate
    per_photo = {}
    for name in sorted(photos):
        task, faces, seconds = one(name)
        per_photo[name] = {
            "faces": faces,
            "status": task.status.value if task.status is not None else None,
            "released_faces": sum(1 for f in task.faces if f.status.released),
            "min_distance": min((round(f.distance, 4) for f in task.faces if f.distance is not None), default=None),
            # the job's CPU stages; "outputs" (the stand-in's masks) is made on the actor, inside its hold
            "cpu_s": round(seconds["decode"] + seconds["detect"] + seconds["compose"], 4),
            "step_s": {k: round(v, 4) for k, v in seconds.items()},
        }
    return per_photo


def serial_bound(per_photo: dict[str, Any], drawn: list[str], cores: int, cost_s: float, actors: int) -> dict[str, Any]:
    """What the machine's CPUs allow: feed rate, GPU demand, and the best busy fraction they permit."""
    cpu_s = sum(per_photo[name]["cpu_s"] for name in drawn) / len(drawn)
    faces = sum(per_photo[name]["faces"] for name in drawn) / len(drawn)
    feed = cores / cpu_s  # samples per second all cores could prepare
    demand = actors / (cost_s * faces) if faces else math.inf  # samples per second the actors could take
    return {
        "cpu_s_per_sample": round(cpu_s, 4),
        "faces_per_sample": round(faces, 4),
        "feed_samples_per_s": round(feed, 3),
        "gpu_demand_samples_per_s": round(demand, 3),
        "best_busy_fraction": round(min(1.0, feed / demand), 4),
    }


# --------------------------------------------------------------------------- measuring a run


def read_log(folder: Path, prefix: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob(f"{prefix}-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def busy_fractions(calls: list[dict[str, Any]], started: float, first_decode: float | None) -> dict[str, Any]:
    """Per actor and for the pool: held seconds over the actor's window (see the module docstring)."""
    end = max(c["call"][1] for c in calls)
    last_start = max(c["call"][0] for c in calls)
    actors = sorted({c["actor"] for c in calls})
    per_actor, held_total, window_total, held_early, window_early = [], 0.0, 0.0, 0.0, 0.0
    for actor in actors:
        mine = sorted((c for c in calls if c["actor"] == actor), key=lambda c: c["call"][0])
        first = mine[0]["call"][0]
        held = sum(c["hold"][1] - c["hold"][0] for c in mine)
        early = sum(max(0.0, min(c["hold"][1], last_start) - c["hold"][0]) for c in mine)
        gaps = [b["call"][0] - a["call"][1] for a, b in itertools.pairwise(mine)]
        held_total, window_total = held_total + held, window_total + (end - first)
        if last_start > first:
            held_early, window_early = held_early + early, window_early + (last_start - first)
        per_actor.append(
            {
                "actor": actor,
                "batches": len(mine),
                "faces": sum(c["faces"] for c in mine),
                "samples": sum(c["samples"] for c in mine),
                "held_s": round(held, 3),
                "window_s": round(end - first, 3),
                "busy_fraction": round(held / (end - first), 4),
                "busy_until_last_start": round(early / (last_start - first), 4) if last_start > first else None,
                "first_batch_after_start_s": round(first - started, 3),
                "idle_gaps_over_0.1s": sum(1 for g in gaps if g > 0.1),
                "longest_gap_s": round(max(gaps, default=0.0), 3),
            }
        )
    first_hold = min(c["hold"][0] for c in calls if c["faces"]) if any(c["faces"] for c in calls) else None
    return {
        "actors_seen": len(actors),
        "pool_busy_fraction": round(held_total / window_total, 4),
        "pool_busy_until_last_start": round(held_early / window_early, 4) if window_early else None,
        "min_actor_busy_fraction": min(a["busy_fraction"] for a in per_actor),
        "drain_s": round(end - last_start, 3),
        "first_anonymization_after_run_start_s": round(first_hold - started, 3) if first_hold else None,
        "first_anonymization_after_first_decode_s": (
            round(first_hold - first_decode, 3) if first_hold and first_decode else None
        ),
        "first_decode_after_run_start_s": round(first_decode - started, 3) if first_decode else None,
        "samples_per_batch": sorted({c["samples"] for c in calls}),
        "faces_per_batch_mean": round(sum(c["faces"] for c in calls) / len(calls), 3),
        "per_actor": per_actor,
    }


def gate_evidence(output: Path) -> dict[str, Any]:
    """What the audit says the gate did: faces per status, distances measured, the device that made them."""
    import pyarrow.parquet as pq

    statuses: dict[str, int] = {}
    distances: list[float] = []
    devices: set[str] = set()
    for path in sorted(output.glob(".raypipe/shards/*.audit.parquet")):
        table = pq.read_table(path, columns=["faces", "device"]).to_pylist()
        for row in table:
            for face in row["faces"] or []:
                statuses[face["status"]] = statuses.get(face["status"], 0) + 1
                if face["distance"] is not None:
                    distances.append(float(face["distance"]))
            if row["faces"]:
                devices.add(str(row["device"]))
    return {
        "face_statuses": dict(sorted(statuses.items())),
        "faces_with_distance": len(distances),
        "min_distance": round(min(distances), 4) if distances else None,
        "devices": sorted(devices),
    }


def job_config(pattern: str, output: Path, settings: dict[str, Any], actors: int) -> Any:
    from raypipe.config import build_config

    pipeline = {
        "num_gpus_per_actor": 0,
        "num_cpus_per_actor": settings["actor_cpus"],
        "anonymize_actors_min": actors,
        "anonymize_actors_max": actors,
        "progress": False,
        "stall_timeout_s": settings["stall_timeout_s"],
    }
    for key in ("batch_size", "detect_actors", "compose_actors", "anonymize_tasks_in_flight"):
        if settings.get(key) is not None:
            pipeline[key] = settings[key]
    data = {
        "input": pattern,
        "output": str(output),
        "models": {"preset": "tiny", "analyzer": "dlib", "device": "cpu"},
        "method": {"face_size": settings["face_size"]},
        "pipeline": pipeline,
    }
    return build_config(data, {})


def run_setting(cost_s: float, actors: int, shards: list[Path], work: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """One job over ``shards`` with ``actors`` stand-ins holding ``cost_s`` per face."""
    import raypipe.pipeline.run as job
    from raypipe.pipeline import stages

    name = f"c{cost_s:g}-n{actors}-{uuid.uuid4().hex[:6]}"
    logs, output = work / "logs" / name, work / "out" / name
    logs.mkdir(parents=True)
    pattern = str(shards[0].parent / f"part-{{00000..{len(shards) - 1:05d}}}.tar")
    config = job_config(pattern, output, settings, actors)
    real_anonymize, real_decode = stages.Anonymize, getattr(stages, "Decode", None)
    probe = first_decode_probe(logs)
    stages.Anonymize = stand_in(cost_s, logs)  # type: ignore[misc]  # run.job_stages builds stages.Anonymize
    if probe is not None:
        stages.Decode = probe  # type: ignore[misc]  # run.job_stages builds stages.Decode
    load = os.getloadavg()[0]
    started = time.time()
    try:
        summary = job.run(config)
    finally:
        stages.Anonymize = real_anonymize  # type: ignore[misc]
        if real_decode is not None:
            stages.Decode = real_decode  # type: ignore[misc]
    wall = time.time() - started
    calls = read_log(logs, "anonymize")
    if not calls:
        raise RuntimeError("the stand-in anonymizer never ran in the workers: the replacement did not take effect")
    decodes = read_log(logs, "decode")
    first_decode = min((d["start"] for d in decodes), default=None)
    measured = busy_fractions(calls, started, first_decode)
    gate = gate_evidence(output)
    faces_seen = sum(c["faces"] for c in calls)
    if STAND_IN_DEVICE not in gate["devices"] or faces_seen == 0:
        raise RuntimeError(f"the audit does not show the stand-in's faces: {gate['devices']}, {faces_seen} faces")
    return {
        "cost_s_per_face": cost_s,
        "actors": actors,
        "shards": len(shards),
        "samples": summary.samples_processed,
        "faces_anonymized": faces_seen,
        "job_wall_s": round(wall, 3),
        "counts": summary.counts,
        "ok": summary.ok,
        "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],  # before, after: the machine is shared
        "gate": gate,
        **measured,
    }


# --------------------------------------------------------------------------- driver


def data_context_options(args: argparse.Namespace) -> dict[str, Any]:
    """Set the Ray Data options asked for on the driver's DataContext (the one the job's plan uses)."""
    import ray

    context = ray.data.DataContext.get_current()
    if args.max_tasks_in_flight is not None:
        context.max_tasks_in_flight_per_actor = args.max_tasks_in_flight
    if args.reservation is not None:
        context.op_resource_reservation_enabled = args.reservation == "on"
    return {
        "max_tasks_in_flight_per_actor": context.max_tasks_in_flight_per_actor,
        "op_resource_reservation_enabled": context.op_resource_reservation_enabled,
        "op_resource_reservation_ratio": context.op_resource_reservation_ratio,
        "target_max_block_size": context.target_max_block_size,
    }


def start_ray(work: Path, cpus: int) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            object_store_memory=2 * 1024**3,
            _temp_dir=str(work / "ray"),
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="one small setting (c 0.2 s, 2 actors, 1 shard of 6, 512 px): tests"
    )
    p.add_argument("--costs", type=float, nargs="+", default=[0.2, 2.0], help="GPU seconds per face")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 3, 4], help="stand-in actors")
    p.add_argument("--gpu-seconds", type=float, default=30.0, help="GPU work per actor in each setting's input")
    p.add_argument("--max-samples", type=int, default=400, help="cap on one setting's samples")
    p.add_argument("--per-shard", type=int, default=20, help="samples per input shard")
    p.add_argument("--face-size", type=int, default=1024, help="method.face_size: the crops the GPU gets")
    p.add_argument("--batch-size", type=int, default=None, help="pipeline.batch_size (default: the config's)")
    p.add_argument("--detect-actors", type=int, default=None, help="pipeline.detect_actors")
    p.add_argument("--compose-actors", default=None, help="pipeline.compose_actors: a number or auto")
    p.add_argument("--actor-cpus", type=float, default=0.1, help="pipeline.num_cpus_per_actor of the stand-ins")
    p.add_argument("--max-tasks-in-flight", type=int, default=None, help="DataContext.max_tasks_in_flight_per_actor")
    p.add_argument(
        "--anonymize-tasks-in-flight",
        type=int,
        nargs="+",
        default=None,
        help="pipeline.anonymize_tasks_in_flight, per setting: batches queued per actor (default: the config's;"
        " the first value is the baseline the others are compared with)",
    )
    p.add_argument("--reservation", choices=["on", "off"], default=None, help="op_resource_reservation_enabled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.costs, args.actors, args.gpu_seconds, args.max_samples, args.per_shard = [0.2], [2], 1.5, 6, 6
        args.face_size = 512
    if args.compose_actors not in (None, "auto"):
        args.compose_actors = int(args.compose_actors)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if __name__ != "__main__":  # loaded as a module (tests): ship the stand-in's code by value all the same
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ.setdefault("RAYPIPE_AUDIT_KEY", "benchmark-hmac-key-0123456789")  # a signed manifest, as in production
    from raypipe.config import PipelineConfig

    defaults = PipelineConfig()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="raypipe-gpufeed-"))
    settings = {
        "batch_size": args.batch_size,
        "detect_actors": args.detect_actors,
        "compose_actors": args.compose_actors,
        "actor_cpus": args.actor_cpus,
        "face_size": args.face_size,
        "stall_timeout_s": 300.0,
    }
    try:
        photos = real_photos()
        encoded = {name: jpeg(image) for name, image in photos.items()}
        config = job_config(str(work / "in" / "x.tar"), work / "unused", settings, 1)
        per_photo = serial_costs(photos, encoded, config)
        start_ray(work, cores)
        context = data_context_options(args)
        faces_per_photo = sum(p["faces"] for p in per_photo.values()) / len(per_photo)
        rows = []
        for cost in args.costs:
            for actors in args.actors:
                wanted = math.ceil(args.gpu_seconds * actors / (cost * faces_per_photo))
                count = min(args.max_samples, max(args.per_shard, wanted))
                count = math.ceil(count / args.per_shard) * args.per_shard  # whole shards
                drawn = draw_samples(list(photos), count, args.seed)
                folder = work / "in" / f"{count}"
                shards = sorted(folder.glob("part-*.tar")) or write_shards(folder, drawn, encoded, args.per_shard)
                baseline = None
                for in_flight in args.anonymize_tasks_in_flight or [None]:
                    row = run_setting(cost, actors, shards, work, settings | {"anonymize_tasks_in_flight": in_flight})
                    row["anonymize_tasks_in_flight"] = in_flight or defaults.anonymize_tasks_in_flight
                    bound = serial_bound(per_photo, drawn, cores, cost, actors)
                    row["cpu_bound"] = bound
                    row["busy_over_cpu_bound"] = round(row["pool_busy_fraction"] / bound["best_busy_fraction"], 4)
                    baseline = baseline or row
                    row["busy_over_first_in_flight"] = round(
                        row["pool_busy_fraction"] / max(baseline["pool_busy_fraction"], 1e-9), 3
                    )
                    rows.append(row)
                    print(
                        f"c={cost:g}s n={actors} in flight {row['anonymize_tasks_in_flight']}: pool busy"
                        f" {row['pool_busy_fraction']:.3f} (until last start {row['pool_busy_until_last_start']},"
                        f" min actor {row['min_actor_busy_fraction']:.3f});"
                        f" CPU bound {bound['best_busy_fraction']:.3f},"
                        f" measured/bound {row['busy_over_cpu_bound']:.3f}; {row['busy_over_first_in_flight']}x the"
                        f" first in-flight setting; first anonymization {row['first_anonymization_after_run_start_s']}"
                        f" s after run(); {row['samples']} samples, {row['faces_anonymized']} faces,"
                        f" {row['job_wall_s']:.1f} s",
                        flush=True,
                    )
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "gpu_feed",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {
            "name": f"{platform.machine()} CPU ({cores} cores), no GPU: the anonymizer is a time.sleep stand-in",
            "python": platform.python_version(),
            "ray": __import__("ray").__version__,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {
            "batch_size": args.batch_size or defaults.batch_size,
            "detect_actors": args.detect_actors or defaults.detect_actors,
            "compose_actors": args.compose_actors or defaults.compose_actors,
            "analyzer": "dlib (HOG)",
            "gate": "on (audit defaults: dlib recognizer, missed-face check)",
            "data_context": context,
        },
        "serial_per_photo": per_photo,
        "rows": rows,
    }
    out = write_report(report, "gpu_feed", args.quick, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
