"""The memory model behind ``method.face_batch_size: auto``, at full SDXL size: how many faces fit in one
UNet call on 24, 48 and 80 GB cards.

Builds SDXL base 1.0's architecture with IP-Adapter-FaceID (rank 128) on the meta device (no weights,
no compute; `benchmarks/core_gpu.py` builds it), fuses the LoRA as the defaults do, and traces one guided
UNet call for 1 and 2 faces (``raypipe.anonymize.memory.peak_model``). Weights: UNet and text encoders in
bfloat16, the VAE in float32, as loaded. The free memory of a card is its size less the weights less a
CUDA context, assumed here (:data:`CUDA_CONTEXT`), not measured; on a GPU, `auto` asks the device instead
(``torch.cuda.mem_get_info``) and the GPU benchmark compares the model with ``max_memory_allocated``.

    .venv/bin/python benchmarks/memory_model.py     # writes benchmarks/results/memory_model.json (about a minute)
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

    from raypipe.anonymize.memory import MARGIN, fitting_batch, peak_model, vae_peak_bytes
    from raypipe.anonymize.models import optimize_for_inference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-sizes", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--out", type=Path, default=RESULTS / "memory_model.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    models = build_models(False, torch.device("meta"), torch.bfloat16)
    optimize_for_inference(models, fuse_lora=True)
    pipe = models.pipe
    weights = sum(module_bytes(m) for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae))
    rows = []
    for size in args.face_sizes:
        first, each = peak_model(models, size)
        vae = vae_peak_bytes(models, size)
        for card in CARDS_GB:
            free = card * 10**9 - weights - CUDA_CONTEXT
            rows.append(
                {
                    "face_size": size,
                    "card_gb": card,
                    "weights_gib": round(weights / 2**30, 2),
                    "first_face_gib": round(first / 2**30, 3),
                    "each_further_face_gib": round(each / 2**30, 3),
                    "vae_decode_one_face_gib": round(vae / 2**30, 3),
                    "vae_fits": vae <= free * (1 - MARGIN),
                    "faces_per_call": fitting_batch(int(free), first, each),
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


if __name__ == "__main__":
    raise SystemExit(main())
