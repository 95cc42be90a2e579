"""What rides each stage boundary: bytes per face of the rows the job pickles from stage to stage, on
real photos, with slim rows (now) and without (before).

raypipe's real stages run in this process on one WebDataset shard of the offline photo mix
(``benchmarks/photos.py``, JPEG, 0-6 faces each): read (``shard_tasks``), ``Decode``, ``Detect`` (dlib),
the anonymizer's output (the aligned crop with the face masked, as ``benchmarks/gpu_feed.py``'s stand-in
returns; its size is the real one, ``method.face_size`` squared), ``Compose`` with the gate on. At each
boundary every row is pickled as the job packs it (``raypipe.pipeline.task.pack``); the bytes are what Ray
Data moves through the object store there. Baseline in the same run: the same stages with
``SampleTask.slim`` and ``PreparedFace.drop_inputs`` turned into no-ops, so every row carries its member
bytes, decoded pixels, crops and embeddings on every hop, as before slim rows.

    .venv/bin/python benchmarks/row_bytes.py          # face size 1024
    .venv/bin/python benchmarks/row_bytes.py --quick  # face size 256, two photos (tests)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_feed import jpeg, masked_outputs  # noqa: E402
from benchmarks.photos import real_photos  # noqa: E402
from benchmarks.report import write_report  # noqa: E402

HOPS = ("read -> decode", "decode -> detect", "detect -> anonymize", "anonymize -> compose", "compose -> write")


def shard_of(photos: dict[str, Any], folder: Path) -> Path:
    from raypipe.io.tars import Sample, write_tar

    path = folder / "part-00000.tar"
    samples = [
        Sample(f"{i:05d}", [(f"{i:05d}.jpg", jpeg(rgb)), (f"{i:05d}.json", b'{"photo": %d}' % i)])
        for i, rgb in enumerate(photos.values())
    ]
    with open(path, "wb") as fh:
        write_tar(samples, fh)
    return path


def with_outputs(tasks: list[Any]) -> list[Any]:
    """The anonymizer's side of the boundary, as ``raypipe.pipeline.stages.Anonymize`` leaves it: each
    face's output crop set (the stand-in's masked crop), its input crop and embedding dropped."""
    masked_outputs(tasks)
    for task in tasks:
        for image in task.images:
            for face in image.faces:
                face.drop_inputs()
    return tasks


def hop_bytes(shard: Path, face_size: int, slim: bool) -> dict[str, Any]:
    """Pickled bytes of all rows at each boundary, for one pass of the stages."""
    from raypipe.anonymize.pipeline import PreparedFace
    from raypipe.config import build_config
    from raypipe.io.storage import StorageOptions
    from raypipe.pipeline.read import ShardWork, shard_tasks
    from raypipe.pipeline.stages import Compose, Decode, Detect
    from raypipe.pipeline.task import SampleTask, pack

    config = build_config(
        {
            "input": str(shard),
            "output": str(shard.parent / "out"),
            "models": {"preset": "tiny", "analyzer": "dlib", "device": "cpu"},
            "method": {"face_size": face_size},
        },
        {},
    )
    real_slim, real_drop = SampleTask.slim, PreparedFace.drop_inputs
    if not slim:  # the baseline: nothing is dropped on the way
        SampleTask.slim = PreparedFace.drop_inputs = lambda self: None  # type: ignore[method-assign]
    try:
        tasks = list(shard_tasks(ShardWork(str(shard), shard.name), StorageOptions(), config.limits))
        steps = (
            (HOPS[1], Decode(config.limits).ready()),
            (HOPS[2], Detect(config.models, config.method, config.limits).ready()),
            (HOPS[3], with_outputs),
            (
                HOPS[4],
                Compose(config.audit, config.models.analyzer, config.utility, config.limits, StorageOptions()).ready(),
            ),
        )
        measured = {HOPS[0]: sum(len(pack(t)["task"]) for t in tasks)}
        for hop, stage in steps:
            tasks = stage(tasks)
            measured[hop] = sum(len(pack(t)["task"]) for t in tasks)
    finally:
        SampleTask.slim, PreparedFace.drop_inputs = real_slim, real_drop  # type: ignore[method-assign]
    faces = sum(len(t.faces) for t in tasks)
    released = sum(1 for t in tasks for f in t.faces if f.status.released)
    return {"faces": faces, "faces_released": released, "bytes": measured}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--face-size", type=int, default=1024, help="method.face_size: the crops' side")
    p.add_argument("--photos", nargs="+", default=None, help="names from benchmarks/photos.py (default: all)")
    p.add_argument("--quick", action="store_true", help="face size 256, two photos with 4 faces (tests)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.face_size, args.photos = 256, ["astronaut", "t1.jpg left half"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos = real_photos()
    if args.photos:
        photos = {name: photos[name] for name in args.photos}
    with tempfile.TemporaryDirectory(prefix="raypipe-rowbytes-") as work:
        shard = shard_of(photos, Path(work))
        input_mb = shard.stat().st_size / 2**20
        now = hop_bytes(shard, args.face_size, slim=True)
        before = hop_bytes(shard, args.face_size, slim=False)
    if now["faces"] != before["faces"] or now["faces_released"] != before["faces_released"]:
        raise RuntimeError(f"slim rows changed the outcome: {now} vs {before}")
    faces = now["faces"]
    rows = []
    for hop in HOPS:
        row = {
            "hop": hop,
            "before_mb_per_face": round(before["bytes"][hop] / faces / 2**20, 3),
            "now_mb_per_face": round(now["bytes"][hop] / faces / 2**20, 4),
            "ratio": round(before["bytes"][hop] / max(now["bytes"][hop], 1), 1),
        }
        rows.append(row)
        print(
            f"{hop:22s} {row['before_mb_per_face']:8.3f} -> {row['now_mb_per_face']:8.4f} MB per face ({row['ratio']}x)"
        )
    total_before = sum(before["bytes"].values()) / faces / 2**20
    total_now = sum(now["bytes"].values()) / faces / 2**20
    report = {
        "benchmark": "row_bytes",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {"name": f"{platform.machine()} CPU ({os.cpu_count()} cores)", "python": platform.python_version()},
        "settings": {"face_size": args.face_size, "quick": args.quick, "photos": sorted(photos)},
        "samples": len(photos),
        "faces": faces,
        "faces_released": now["faces_released"],
        "input_shard_mb": round(input_mb, 2),
        "rows": rows,
        "all_hops_before_mb_per_face": round(total_before, 3),
        "all_hops_now_mb_per_face": round(total_now, 4),
        "all_hops_ratio": round(total_before / total_now, 1),
    }
    out = write_report(report, "row_bytes", args.quick, args.out)
    print(f"all hops: {total_before:.2f} -> {total_now:.3f} MB per face ({report['all_hops_ratio']}x); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
