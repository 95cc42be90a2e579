"""What the Ray job costs around the GPU: the whole job with a zero-cost anonymizer against a plain tar copy.

The job is raypipe's real job (``raypipe anonymize``: read, decode, detect, anonymize, compose, write
fragments, finalize shards, audit, signed manifest), with the tiny preset on the CPU. Its input is
shards of faceless photos, so the anonymizer has no face to work on: its cost is zero, and what is
left is the plumbing plus the work every sample needs anyway (decode and face detection, which must
stay: privacy is the product, and no configuration releases an image nobody looked at).

Measured in the same run, on the same shards, at 1x/2x/4x the shards:

- ``tar copy``: read every shard with ``raypipe.io.tars.iter_samples`` and write it back with
  ``write_tar`` (the least any job producing these shards must do);
- ``serial decode+detect``: the tar copy plus decoding every image and running the same face detector
  in the same process (the least a job that looks at every image must do);
- ``job``: ``raypipe anonymize`` in a fresh process (its Python start, Ray start and shutdown
  included), with the driver's peak RSS from its run record.

Costs are fitted as ``seconds = fixed + per_shard * shards``; the throughput ratios compare both the
whole wall time and the marginal (per-shard) cost. Start Ray only in a loopback-only namespace here:

    unshare -n sh -c 'ip link set lo up && RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/pipeline_cpu.py'
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from raypipe.io.tars import Sample, iter_samples, write_tar  # noqa: E402

STEPS = ("decode", "detect", "anonymize", "compose")


# --------------------------------------------------------------------------- input shards


def faceless_photos(size: int, count: int, seed: int = 0) -> list[bytes]:
    """``count`` different JPEG crops (``size`` x ``size``) of scikit-image's faceless photos."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [np.ascontiguousarray(data.coffee()), np.ascontiguousarray(data.rocket())]
    out = []
    for i in range(count):
        photo = sources[i % len(sources)]
        y = int(rng.integers(0, photo.shape[0] - size + 1))
        x = int(rng.integers(0, photo.shape[1] - size + 1))
        buffer = io.BytesIO()
        Image.fromarray(photo[y : y + size, x : x + size]).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_shards(folder: Path, shards: int, per_shard: int, image_size: int) -> list[Path]:
    """WebDataset shards: each sample a faceless JPEG, a JSON record and a caption."""
    photos = faceless_photos(image_size, 64)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            key = f"{s:05d}{i:05d}"
            samples.append(
                Sample(
                    key=key,
                    members=[
                        (f"{key}.jpg", photos[(s * per_shard + i) % len(photos)]),
                        (f"{key}.json", json.dumps({"shard": s, "index": i, "source": "benchmark"}).encode()),
                        (f"{key}.txt", f"a faceless photo, sample {i} of shard {s}".encode()),
                    ],
                )
            )
        path = folder / f"part-{s:05d}.tar"
        with open(path, "wb") as fh:
            write_tar(samples, fh)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- baselines


def tar_copy(shards: list[Path], out: Path, detector: Any = None) -> float:
    """Read every shard and write it back; with ``detector``, also decode and scan every image."""
    from raypipe.images import decode_image, image_format_for

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for path in shards:
        with open(path, "rb") as src, open(out / path.name, "wb") as dst:
            samples = (s for s in iter_samples(src, source=str(path)) if isinstance(s, Sample))
            if detector is not None:
                samples = (_scanned(s, detector, decode_image, image_format_for) for s in samples)
            write_tar(samples, dst)
    return time.perf_counter() - started


def _scanned(sample: Sample, detector: Any, decode_image: Any, image_format_for: Any) -> Sample:
    for name, data in sample.members:
        if image_format_for(name) is not None and detector.analyze(decode_image(data).rgb):
            raise RuntimeError(f"{name}: the benchmark's photos must be faceless")
    return sample


# --------------------------------------------------------------------------- the job


JOB_CONFIG = """\
models: {preset: tiny, analyzer: dlib, device: cpu}
method: {num_steps: 4, face_size: 128}
pipeline: {num_gpus_per_actor: 0, num_cpus_per_actor: 0.5, batch_size: %(batch_size)d, progress: false}
audit: {check_missed_faces: %(check_missed)s}
"""


def run_job(inputs: str, out: Path, config: Path) -> dict[str, Any]:
    """``raypipe anonymize`` in a fresh process; its wall time, run record and per-step audit timings."""
    env = dict(os.environ, RAYPIPE_AUDIT_KEY="benchmark-hmac-key-0123456789", RAY_USAGE_STATS_ENABLED="0")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    command = [sys.executable, "-m", "raypipe.cli", "anonymize", inputs, str(out), "--config", str(config)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the job failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    records = sorted(glob.glob(str(out / ".raypipe" / "runs" / "*.json")))
    run_record = json.loads(Path(records[-1]).read_text())
    return {"wall_s": wall, "run": run_record, "step_cpu_s": audit_step_seconds(out)}


def audit_step_seconds(out: Path) -> dict[str, float]:
    """Seconds spent per stage, summed over samples, from the audit records' timings."""
    import pyarrow.parquet as pq

    totals = dict.fromkeys(STEPS, 0.0)
    for path in sorted(out.glob(".raypipe/shards/*.audit.parquet")):
        for value in pq.read_table(path, columns=["timings"]).column("timings").to_pylist():
            for step, seconds in json.loads(value or "{}").items():
                totals[step] = totals.get(step, 0.0) + seconds
    return {k: round(v, 3) for k, v in totals.items()}


# --------------------------------------------------------------------------- report


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = np.polyval([slope, intercept], xs)
    worst = float(np.max(np.abs(predicted - np.asarray(ys)) / np.asarray(ys)))
    return {"per_shard_s": round(float(slope), 4), "fixed_s": round(float(intercept), 3), "max_rel_residual": worst}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=2, help="shards at 1x")
    p.add_argument("--per-shard", type=int, default=200, help="samples per shard")
    p.add_argument("--image-size", type=int, default=256, help="side of the faceless JPEGs")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch-size", type=int, default=None, help="pipeline.batch_size (default: the job's)")
    p.add_argument("--check-missed-faces", action="store_true", help="keep audit.check_missed_faces on")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_cpu.json")
    p.add_argument("--keep", action="store_true", help="keep the work folder (shards, copies, job outputs)")
    args = p.parse_args(argv)

    from raypipe.anonymize.analyzers import DlibAnalyzer
    from raypipe.config import PipelineConfig

    batch_size = args.batch_size or PipelineConfig.batch_size
    work = Path(tempfile.mkdtemp(prefix="raypipe-bench-"))
    shards = write_shards(work / "in", args.shards * max(args.scales), args.per_shard, args.image_size)
    config = work / "job.yaml"
    config.write_text(JOB_CONFIG % {"batch_size": batch_size, "check_missed": str(args.check_missed_faces).lower()})
    detector = DlibAnalyzer()  # the job's detector (models.analyzer: dlib), default settings
    rows = []
    for scale in args.scales:
        subset = shards[: args.shards * scale]
        load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        size = sum(p.stat().st_size for p in subset)
        copy_s = tar_copy(subset, work / f"copy-{scale}")
        serial_s = tar_copy(subset, work / f"scan-{scale}", detector)
        pattern = str(work / "in" / f"part-{{00000..{len(subset) - 1:05d}}}.tar")
        job = run_job(pattern, work / f"job-{scale}", config)
        counts = job["run"]["counts"]
        if counts != {"no_face": len(subset) * args.per_shard}:
            raise RuntimeError(f"expected every sample to come out as no_face, got {counts}")
        row = {
            "scale": scale,
            "shards": len(subset),
            "samples": len(subset) * args.per_shard,
            "megabytes": round(size / 1e6, 2),
            "tar_copy_s": round(copy_s, 3),
            "serial_decode_detect_s": round(serial_s, 3),
            "job_wall_s": round(job["wall_s"], 2),
            "job_run_s": job["run"]["elapsed_s"],
            "driver_peak_rss_mb": job["run"]["driver_peak_rss_mb"],
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
            "step_seconds_summed": job["step_cpu_s"],
            "throughput_ratio_vs_tar_copy": round(copy_s / job["wall_s"], 4),
            "throughput_ratio_vs_serial_decode_detect": round(serial_s / job["wall_s"], 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    xs = [float(r["shards"]) for r in rows]
    fits = {
        name: linear_fit(xs, [float(r[name]) for r in rows])
        for name in ("tar_copy_s", "serial_decode_detect_s", "job_wall_s")
    }
    job_per_shard = fits["job_wall_s"]["per_shard_s"]
    # At tiny scales the job's fixed cost and timing noise can swallow its per-shard cost (a fitted
    # slope of zero or below): then there is no marginal ratio to report, rather than a division by zero.
    marginal = {
        name: round(fits[base]["per_shard_s"] / job_per_shard, 4) if job_per_shard > 0 else None
        for name, base in (("job_vs_tar_copy", "tar_copy_s"), ("job_vs_serial_decode_detect", "serial_decode_detect_s"))
    }
    rss = [r["driver_peak_rss_mb"] for r in rows]
    report = {
        "benchmark": "pipeline_cpu",
        "device": {"name": f"{platform.machine()} CPU ({os.cpu_count()} cores)", "python": platform.python_version()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"batch": batch_size},
        "rows": rows,
        "fits": fits,
        "marginal_throughput_ratio": marginal,
        "driver_peak_rss_mb": {"min": min(rss), "max": max(rss), "growth_1x_to_max": round(max(rss) / rss[0], 3)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"fits": fits, "marginal_throughput_ratio": marginal, "rss": report["driver_peak_rss_mb"]}))
    if args.keep:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
