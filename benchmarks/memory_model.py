"""The memory model behind ``method.face_batch_size: auto``, at full SDXL size: how many faces fit in one
UNet call on 24, 48 and 80 GB cards.

Builds SDXL base 1.0's architecture with IP-Adapter-FaceID (rank 128) on the meta device (no weights,
no compute; `benchmarks/core_gpu.py` builds it), fuses the LoRA as the defaults do, and traces one guided
UNet call for 1 and 2 faces (``raypipe.anonymize.memory.peak_model``). Weights: UNet and text encoders in
bfloat16, the VAE in float32, as loaded. The free memory of a card is its size less the weights less a
CUDA context, assumed here (:data:`CUDA_CONTEXT`), not measured; on a GPU, `auto` asks the device instead
(``torch.cuda.mem_get_info``) and the GPU benchmark compares the model with ``max_memory_allocated``.

    .venv/bin/python benchmarks/memory_model.py     # writes benchmarks/results/memory_model.json (about a minute)
    python benchmarks/memory_model.py --gpu-check   # on a GPU: the model against the allocator's peak
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
CARDS_GB = (24, 48, 80)
CUDA_CONTEXT = 0.8 * 2**30  # bytes a CUDA context and cuBLAS/cuDNN workspaces take (assumed)


def module_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def main(argv: list[str] | None = None) -> int:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from core_gpu import build_models  # type: ignore[import-not-found]

    from raypipe.anonymize.memory import MARGIN, fitting_batch, peak_model, queue_bytes_per_face, vae_peak_bytes
    from raypipe.anonymize.models import optimize_for_inference
    from raypipe.anonymize.pipeline import QUEUE_GROUP

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-sizes", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--out", type=Path, default=RESULTS / "memory_model.json")
    parser.add_argument("--gpu-check", action="store_true", help="on CUDA: traced bytes against max_memory_allocated")
    parser.add_argument("--tiny", action="store_true", help="with --gpu-check: the tiny models (to try it on a CPU)")
    args = parser.parse_args(argv)
    if args.gpu_check:
        return gpu_check(args)
    started = time.perf_counter()
    models = build_models(False, torch.device("meta"), torch.bfloat16)
    optimize_for_inference(models, fuse_lora=True)
    pipe = models.pipe
    weights = sum(module_bytes(m) for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae))
    rows = []
    for size in args.face_sizes:
        first, each = peak_model(models, size)
        vae = vae_peak_bytes(models, size)
        queued = QUEUE_GROUP * queue_bytes_per_face(models, size, 100)  # N = 100, the reference
        for card in CARDS_GB:
            free = card * 10**9 - weights - CUDA_CONTEXT
            rows.append(
                {
                    "face_size": size,
                    "card_gb": card,
                    "weights_gib": round(weights / 2**30, 2),
                    "first_face_gib": round(first / 2**30, 3),
                    "each_further_face_gib": round(each / 2**30, 3),
                    "queue_per_call_face_gib": round(queued / 2**30, 3),
                    "vae_decode_one_face_gib": round(vae / 2**30, 3),
                    "vae_fits": vae <= free * (1 - MARGIN),
                    "faces_per_call": fitting_batch(int(free), first + queued, each + queued),
                }
            )
            print(json.dumps(rows[-1]))
    report = {
        "benchmark": "memory_model",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {"name": "meta (no compute)"},
        "assumed": {"cuda_context_gib": round(CUDA_CONTEXT / 2**30, 2), "margin": MARGIN},
        "results": rows,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def gpu_check(args: argparse.Namespace) -> int:
    """Random full-size models on the GPU: for 1, 2, 4 and 8 faces, the allocator's peak during one
    guided UNet call (above what was allocated before it) against the meta-device trace. On a CPU (or
    with --tiny) it runs the same calls and reports the trace alone: there is no allocator to ask."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from core_gpu import build_models  # type: ignore[import-not-found]

    from raypipe.anonymize.memory import unet_inputs, unet_peak_bytes
    from raypipe.anonymize.models import optimize_for_inference

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    models = build_models(args.tiny, device, torch.bfloat16 if cuda else torch.float32)
    optimize_for_inference(models, fuse_lora=True, channels_last=True)
    rows = []
    for size in args.face_sizes if not args.tiny else [128]:
        for faces in (1, 2, 4, 8):
            traced = unet_peak_bytes(models, faces, size)
            measured = None
            if cuda:
                inputs, kwargs = unet_inputs(models, faces, size, device)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                with torch.inference_mode():
                    models.unet(*inputs, **kwargs)
                torch.cuda.synchronize()
                measured = torch.cuda.max_memory_allocated(device) - before
                del inputs, kwargs
            rows.append(
                {
                    "face_size": size,
                    "faces": faces,
                    "traced_gib": round(traced / 2**30, 4),
                    "allocator_peak_gib": round(measured / 2**30, 4) if measured is not None else None,
                    "allocator_over_traced": round(measured / traced, 3) if measured else None,
                }
            )
            print(json.dumps(rows[-1]))
    report = {
        "benchmark": "memory_model --gpu-check",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": {"name": torch.cuda.get_device_name(device) if cuda else "cpu (no allocator peak)"},
        "results": rows,
    }
    out = args.out if args.out != RESULTS / "memory_model.json" else RESULTS / "memory_model-gpu-check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
