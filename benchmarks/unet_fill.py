"""How full the UNet calls run on a realistic mix of faces per image: the work queue against the loop
it replaced, on the same faces, in the same run.

Each "Ray batch" is 8 images drawn (seeded) from real photos available offline, with the number of
faces dlib's HOG detector finds in each: skimage's astronaut (1), camera (0: HOG misses him), coffee
and chelsea the cat (0), insightface's t1.jpg (6) and Tom Hanks (1), matplotlib's Grace Hopper (1), and
the left and right halves of t1.jpg (3 each). All faces of a Ray batch go to the anonymizer together,
as the GPU actor hands them over.

- before: face batches of ``face_batch_size``, each inverted and replayed step by step
  (``invert``/``replay``): ceil(F / B) batches x 2N calls, the last batch short;
- after: the work queue (``raypipe.anonymize.queue``): inversion evaluations batched freely, sampling
  steps of different faces sharing calls, only the last calls short (and padded).

Both run the real tiny random SDXL UNet (64 px faces, so it takes seconds); a forward hook counts the
faces in every call. The numbers that matter on a GPU are the call counts: an SDXL call costs about the
same whatever its fill up to the batch size the GPU saturates at, so calls per face is GPU time per
face. Reports the fraction of calls that run full, UNet calls per face and the wall-time ratio.

    .venv/bin/python benchmarks/unet_fill.py            # 24 Ray batches, writes benchmarks/results/unet_fill.json
    .venv/bin/python benchmarks/unet_fill.py --quick    # 3 Ray batches (tests)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.photos import real_photos  # noqa: E402
from raypipe.anonymize.guidance import GuidedUNet, TextEncoder, inversion_branches, sampling_branches  # noqa: E402
from raypipe.anonymize.inversion import invert, replay  # noqa: E402
from raypipe.anonymize.models import build_tiny_models  # noqa: E402
from raypipe.anonymize.queue import FixedBatchUNet, anonymize_latents  # noqa: E402
from raypipe.anonymize.schedule import NoiseSchedule, SDEDPMSolver2M, make_timesteps  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SIZE = 64
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)
IMAGES_PER_BATCH = 8


def photo_face_counts() -> dict[str, int]:
    """Faces dlib's HOG detector (the tiny preset's analyzer) finds in each real photo of the mix."""
    from raypipe.anonymize.analyzers import DlibAnalyzer

    analyzer = DlibAnalyzer()
    return {name: len(analyzer.detect_boxes(image)) for name, image in real_photos().items()}


def counting(unet: Any) -> tuple[list[int], Callable[[], None]]:
    """Faces per UNet call (the call's batch is both branches: half of it is faces)."""
    calls: list[int] = []
    hook = unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0] // 2))
    return calls, hook.remove


def before(
    models: Any,
    text: TextEncoder,
    x0: torch.Tensor,
    identity: torch.Tensor,
    seeds: list[int],
    size: int,
    timesteps: list[int],
) -> list[int] | None:
    schedule = NoiseSchedule.sdxl()
    for start in range(0, x0.shape[0], size):
        rows = slice(start, start + size)
        solver = SDEDPMSolver2M(schedule)
        u, c = inversion_branches(text, x0[rows].shape[0], models.id_embed_dim)
        inversion = invert(
            x0[rows], timesteps, GuidedUNet(models, u, c, -10.0, TIME_IDS, timesteps), solver, seeds[rows]
        )
        u, c = sampling_branches(text, identity[rows], 1.0, None)
        replay(inversion, timesteps, GuidedUNet(models, u, c, -10.0, TIME_IDS, timesteps), solver)
    return None  # its calls are counted by the forward hook: no padding, the batch is the faces


def after(
    models: Any,
    text: TextEncoder,
    x0: torch.Tensor,
    identity: torch.Tensor,
    seeds: list[int],
    size: int,
    timesteps: list[int],
) -> list[int] | None:
    schedule = NoiseSchedule.sdxl()
    unet = FixedBatchUNet(models, -10.0, TIME_IDS, size)
    anonymize_latents(
        x0,
        timesteps,
        unet,
        lambda: SDEDPMSolver2M(schedule),
        seeds,
        inversion_branches(text, x0.shape[0], models.id_embed_dim),
        sampling_branches(text, identity, 1.0, None),
    )
    return unet.log  # faces per call before padding (the UNet itself always sees `size`)


def summarize(calls: list[int], faces: int, size: int, seconds: float) -> dict[str, Any]:
    return {
        "unet_calls": len(calls),
        "full_fraction": round(sum(n == size for n in calls) / len(calls), 4) if calls else None,
        "calls_per_face": round(len(calls) / faces, 3) if faces else None,
        "face_slots_used": round(sum(calls) / (size * len(calls)), 4) if calls else None,
        "seconds": round(seconds, 3),
    }


def run(quick: bool, size: int, steps: int, seed: int) -> dict[str, Any]:
    counts = photo_face_counts()
    rng = random.Random(seed)
    batches = [[rng.choice(sorted(counts)) for _ in range(IMAGES_PER_BATCH)] for _ in range(3 if quick else 24)]
    models = build_tiny_models(id_embed_dim=512, seed=0)
    text, timesteps = TextEncoder(models), make_timesteps(0.7, steps)
    results: dict[str, Any] = {}
    for method in (before, after):  # warm-up: first calls allocate and pick kernels; not counted
        g = torch.Generator().manual_seed(-1 % 2**31)
        method(
            models,
            text,
            torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=g),
            torch.ones(2, 512),
            [1, 2],
            size,
            timesteps,
        )
    for name, method in (("before", before), ("after", after)):
        calls, stop = counting(models.unet)
        started, faces, real = time.perf_counter(), 0, []
        try:
            for index, images in enumerate(batches):
                n = sum(counts[image] for image in images)
                if n == 0:
                    continue
                g = torch.Generator().manual_seed(index)
                x0 = torch.randn(n, 4, SIZE // 8, SIZE // 8, generator=g)
                identity = torch.nn.functional.normalize(torch.randn(n, 512, generator=g), dim=1)
                logged = method(models, text, x0, identity, [index * 100 + i for i in range(n)], size, timesteps)
                if logged is not None:
                    real.extend(logged)
                faces += n
        finally:
            stop()
        if real:  # the queue pads short calls: count the faces each really carried
            assert len(real) == len(calls) and set(calls) == {size}
            calls = real
        results[name] = summarize(calls, faces, size, time.perf_counter() - started)
    results["ratio"] = {
        "calls_per_face_after_over_before": round(
            results["after"]["calls_per_face"] / results["before"]["calls_per_face"], 4
        ),
        "seconds_after_over_before": round(results["after"]["seconds"] / results["before"]["seconds"], 4),
    }
    faces_per_batch = [sum(counts[i] for i in images) for images in batches]
    return {
        "benchmark": "unet_fill",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {"name": f"{platform.machine()} CPU", "torch": torch.__version__},
        "settings": {"quick": quick, "face_batch_size": size, "num_steps": steps, "seed": seed, "face_px": SIZE},
        "photo_face_counts": counts,
        "faces_per_ray_batch": faces_per_batch,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 Ray batches (for tests)")
    parser.add_argument("--face-batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args.quick, args.face_batch_size, args.steps, args.seed)
    out = args.out or RESULTS / ("unet_fill-quick.json" if args.quick else "unet_fill.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    r = report["results"]
    for name in ("before", "after"):
        print(f"{name:>6}: {r[name]}")
    print(f" ratio: {r['ratio']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
