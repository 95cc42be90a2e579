"""Speed of the Reverse Personalization core: seconds per face and achieved TFLOP/s of the UNet loop.

Full-size SDXL architecture (UNet 2.57 B parameters, SDXL's VAE, both CLIP text encoders) with random
weights, plus IP-Adapter-FaceID-shaped random weights (rank-128 LoRA on every attention layer, 512-d
identity, 4 tokens) attached through raypipe's production path (``attach_faceid_adapter``). Timings do
not depend on weight values, and nothing is downloaded. What is timed is raypipe's own code:
``ReversePersonalization.anonymize_crops`` (VAE encode, ``invert`` and ``replay`` through
``GuidedUNet``, VAE decode), end to end, synchronised by the copy of the result to the host.

Each configuration is timed at two step counts n1 < n2. Every step costs the same (same shapes), so
``time(n) = fixed + n * per_step`` exactly; ``per_step`` (one inversion and one sampling step: two
UNet calls on 2 x faces samples, the solver and the per-step noise) gives the UNet loop's TFLOP/s,
and ``(fixed + N * per_step) / faces`` the seconds per face at N steps. ``--exact`` also runs every N
for real. UNet FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one call, on
the meta device, of the model with its FaceID LoRA fused (IP attention included), the same basis for every
configuration: MFU counts the work a face needs, not the 4.7 % an unfused LoRA adds.

    # on a GPU machine: bf16/fp16 x channels_last off/on, 1024 and 512 px, 1/2/4/8 faces (~6 min on an H100)
    python benchmarks/core_gpu.py --out benchmarks/results/core_gpu-h100.json
    # here, without a GPU: the same code on tiny components, in seconds
    python benchmarks/core_gpu.py --tiny
    # full-size FLOPs per UNet call without running anything (meta tensors, any machine)
    python benchmarks/core_gpu.py --count-only
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from raypipe.anonymize.models import (  # noqa: E402
    TINY_WEIGHT_NAME,
    Models,
    attach_faceid_adapter,
    build_tiny_pipeline,
    optimize_for_inference,
    tiny_faceid_state_dict,
)
from raypipe.anonymize.pipeline import ReversePersonalization  # noqa: E402
from raypipe.anonymize.schedule import make_timesteps  # noqa: E402
from raypipe.config import MethodConfig  # noqa: E402

# --------------------------------------------------------------------------- SDXL base 1.0, written out

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2,567,463,684 parameters).
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),  # diffusers' name; these are SDXL's head counts (64-d heads)
    "use_linear_projection": True,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + 1280 pooled text
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
}
SDXL_UNET_PARAMETERS = 2_567_463_684

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json (83,653,863 parameters).
SDXL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

# CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text towers. Token ids come from raypipe's tiny in-code
# tokenizer (ids < 128), so bos/eos/pad follow it; the text is encoded once and cached, never timed.
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
CLIP_L |= {"hidden_act": "quick_gelu", "projection_dim": 768}
CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20}
CLIP_BIGG |= {"hidden_act": "gelu", "projection_dim": 1280}
CLIP_COMMON = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1}
CLIP_COMMON |= {"pad_token_id": 1}

FACEID_RANK = 128  # IP-Adapter-FaceID SDXL's embedded LoRA
ID_EMBED_DIM = 512  # ArcFace

# Dense (no sparsity) tensor-core peak for 16-bit floats, TFLOP/s, by substring of the device name.
PEAK_TFLOPS_16BIT = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM (reports as "NVIDIA H100 80GB HBM3")
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def peak_for(device_name: str, dtype: str, override: float | None) -> tuple[float | None, str | None]:
    """The device's dense peak for ``dtype``: ``--peak-tflops`` wins; the table covers 16-bit types only."""
    if override is not None:
        return override, "--peak-tflops"
    if dtype not in ("float16", "bfloat16"):
        return None, None
    for key, value in PEAK_TFLOPS_16BIT.items():  # ordered: the more specific names come first
        if key in device_name:
            return value, f"table: {key} dense fp16/bf16"
    return None, None


# --------------------------------------------------------------------------- models


def build_sdxl_pipeline(device: Any) -> Any:
    """SDXL base's architecture with random weights, built directly on ``device`` (float32)."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizers = build_tiny_pipeline()  # only its in-code tokenizers are kept
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L, **CLIP_COMMON))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG, **CLIP_COMMON))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers.tokenizer,
        tokenizer_2=tokenizers.tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )


def variance_preserving(state: dict[str, dict[str, Any]]) -> None:
    """Rescale the random FaceID weights (std 0.1) to std 1/sqrt(fan_in): at SDXL width, std 0.1 on
    every attention layer overflows half precision; values are irrelevant to timing, finiteness is not."""
    for group in state.values():
        for name, tensor in group.items():
            if tensor.dim() == 2 and not name.startswith("norm"):
                tensor.mul_(1.0 / (0.1 * math.sqrt(tensor.shape[1])))


def build_models(tiny: bool, device: Any, dtype: Any) -> Models:
    """Random models through raypipe's loading path: FaceID weights via ``attach_faceid_adapter``."""
    import torch

    pipe = build_tiny_pipeline() if tiny else build_sdxl_pipeline(device)
    state = tiny_faceid_state_dict(pipe, ID_EMBED_DIM, rank=4 if tiny else FACEID_RANK)
    if not tiny:
        variance_preserving(state)
    attach_faceid_adapter(pipe, state, TINY_WEIGHT_NAME)
    for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2):
        module.to(device=device, dtype=dtype)
    pipe.vae.to(device=device, dtype=torch.float32)  # as in production: the VAE always runs in float32
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
        module.eval()
    name = "tiny" if tiny else "sdxl-base-1.0 architecture"
    return Models(
        pipe=pipe,
        device=torch.device(device),
        dtype=dtype,
        id_embed_dim=ID_EMBED_DIM,
        sources={"sdxl": f"random({name})", "ip_adapter": f"random(faceid rank={4 if tiny else FACEID_RANK})"},
        weight_hashes={"sdxl": "random", "ip_adapter": "random"},
    )


# --------------------------------------------------------------------------- counting


class OpCounter:
    """Counts the aten operators one call dispatches: each is about one kernel launch on a GPU."""

    def __enter__(self) -> OpCounter:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                counter.ops += 1
                return func(*args, **(kwargs or {}))

        self.ops = 0
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def unet_call(rp: ReversePersonalization, faces: int, face_size: int) -> Any:
    """One denoiser call of the sampling phase for ``faces`` faces (both branches: 2 x faces samples)."""
    import torch

    from raypipe.anonymize.guidance import GuidedUNet, sampling_branches

    models = rp.models
    identity = torch.nn.functional.normalize(torch.randn(faces, models.id_embed_dim), dim=1)
    unconditional, conditional = sampling_branches(rp.text, identity, 1.0, None)
    time_ids = (face_size, face_size, 0, 0, face_size, face_size)
    denoise = GuidedUNet(models, unconditional, conditional, rp.method.guidance_scale, time_ids)
    latent = face_size // models.vae_scale_factor
    x = torch.zeros(faces, 4, latent, latent, device=models.device)
    return lambda: denoise(x, rp.timesteps[0])


def count_vae(models: Models, face_size: int) -> int:
    """FLOPs of encoding and decoding one face with the float32 VAE."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from raypipe.anonymize.inversion import decode_latents, encode_crops

    crops = torch.zeros(1, 3, face_size, face_size, dtype=torch.uint8, device=models.device)
    with FlopCounterMode(display=False) as flops:
        decode_latents(models.vae, encode_crops(models.vae, crops))
    return int(flops.get_total_flops())


def count_unet_call(rp: ReversePersonalization, face_size: int) -> dict[str, int]:
    """FLOPs and dispatched aten ops of one UNet call for one face (its two branches in one batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    call = unet_call(rp, 1, face_size)
    with FlopCounterMode(display=False) as flops:
        call()
    with OpCounter() as ops:
        call()
    return {"flops": int(flops.get_total_flops()), "aten_ops": ops.ops}


# --------------------------------------------------------------------------- timing


def with_steps(rp: ReversePersonalization, steps: int, faces: int) -> ReversePersonalization:
    """The same models and cached text embeddings, another step count and batch size."""
    method = replace(rp.method, num_steps=steps, face_batch_size=faces)
    clone = ReversePersonalization(rp.models, None, method)
    clone.text = rp.text  # "" and the zero text are encoded once per actor in production, too
    return clone


def time_anonymize(rp: ReversePersonalization, crops: list[np.ndarray], seeds: list[int], repeats: int) -> float:
    """Best of ``repeats`` wall times of ``anonymize_crops`` (the copy to host synchronises)."""
    best = math.inf
    embeddings = [e / np.linalg.norm(e) for e in np.random.default_rng(1).normal(size=(len(crops), ID_EMBED_DIM))]
    for _ in range(repeats):
        started = time.perf_counter()
        out = rp.anonymize_crops(crops, embeddings, seeds)
        best = min(best, time.perf_counter() - started)
    if len(out) != len(crops):
        raise RuntimeError(f"{len(out)} results for {len(crops)} faces")
    return best


def sdpa_context(backend: str) -> contextlib.AbstractContextManager[Any]:
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH,
        }[backend]
    )


def measure(
    rp: ReversePersonalization,
    face_size: int,
    faces: int,
    args: argparse.Namespace,
    flops_per_face_call: int,
    peak: float | None,
) -> dict[str, Any]:
    import torch

    cuda = rp.models.device.type == "cuda"
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (face_size, face_size, 3), dtype=np.uint8) for _ in range(faces)]
    seeds = list(range(faces))
    n1, n2 = args.timed_steps
    started = time.perf_counter()
    time_anonymize(with_steps(rp, 2, faces), crops, seeds, 1)  # warm-up: kernels chosen, graphs compiled
    warmup_s = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats(rp.models.device)
    t1 = time_anonymize(with_steps(rp, n1, faces), crops, seeds, args.repeats)
    t2 = time_anonymize(with_steps(rp, n2, faces), crops, seeds, args.repeats)
    per_step = max((t2 - t1) / (n2 - n1), 1e-12)
    fixed = max(t1 - n1 * per_step, 0.0)
    loop_flops = 2 * faces * flops_per_face_call  # per step: one inversion and one sampling UNet call
    tflops = loop_flops / per_step / 1e12
    result: dict[str, Any] = {
        "face_size": face_size,
        "faces_per_batch": faces,
        "warmup_s": round(warmup_s, 3),
        "measured": {"steps": [n1, n2], "seconds": [round(t1, 4), round(t2, 4)]},
        "fixed_s": round(fixed, 4),  # VAE encode + decode, text/branch set-up, host copies
        "per_step_s": round(per_step, 5),  # one inversion + one sampling step for the whole batch
        "unet_flops_per_face_call": flops_per_face_call,
        "unet_loop_tflops": float(f"{tflops:.4g}"),
        "mfu": float(f"{tflops / peak:.4g}") if peak else None,
        "seconds_per_face": {str(n): round((fixed + n * per_step) / faces, 4) for n in args.steps},
        "vae_share_at_max_steps": round(fixed / (fixed + max(args.steps) * per_step), 4),
    }
    if args.exact:
        result["seconds_per_face_exact"] = {
            str(n): round(time_anonymize(with_steps(rp, n, faces), crops, seeds, 1) / faces, 4) for n in args.steps
        }
    if cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(rp.models.device) / 2**30, 2)
    return result


# --------------------------------------------------------------------------- runs


def device_info(device: Any) -> dict[str, Any]:
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return {"name": name, "type": "cuda", "cuda": torch.version.cuda, "torch": torch.__version__}
    cpu = f"{platform.machine()} CPU ({__import__('os').cpu_count()} cores)"
    return {"name": cpu, "type": device.type, "torch": torch.__version__}


def switch(value: str) -> bool:
    return value == "on"


def run_grid(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device("cpu" if args.tiny else args.device)
    if args.tiny:
        # One thread: on a shared CPU, a second OpenMP thread that is descheduled stalls every
        # operator at its barrier, and the timings swing by 10x.
        torch.set_num_threads(1)
    info = device_info(device)
    report: dict[str, Any] = {
        "benchmark": "core_gpu",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "models": "tiny" if args.tiny else "sdxl-base-1.0 architecture, random weights, FaceID rank 128",
        "device": info,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": [],
    }
    # Static-shape graphs per (face size, batch): room for every one the grid visits.
    torch._dynamo.config.recompile_limit = 64
    started = time.perf_counter()
    # MFU counts useful work only: the FLOPs of a call with the LoRA merged (fused basis), for every
    # configuration; an unfused UNet does 4.7 % more arithmetic for the same result.
    useful = useful_flops(args.tiny, args.face_sizes)
    report["flops_basis"] = {"fused_lora": True, "unet_flops_per_face_call": {str(k): v for k, v in useful.items()}}
    for dtype_name, fuse in itertools.product(args.dtypes, args.fuse_lora):
        dtype = getattr(torch, dtype_name)
        built = time.perf_counter()
        models = build_models(args.tiny, device, dtype)
        optimize_for_inference(models, fuse_lora=switch(fuse))
        setup_s = time.perf_counter() - built
        base = ReversePersonalization(models, None, MethodConfig(face_size=max(args.face_sizes)))
        for compiled in sorted(args.compile, key=switch):  # eager first: compiling is in place
            if switch(compiled):
                optimize_for_inference(models, compile=True, compile_mode=args.compile_mode)
            for layout, sdpa, size, faces in itertools.product(
                args.channels_last, args.sdpa, args.face_sizes, args.batches
            ):
                if time.perf_counter() - started > args.budget_s:
                    report["stopped"] = f"--budget-s {args.budget_s} reached; later configurations not run"
                    return report
                fmt = torch.channels_last if switch(layout) else torch.contiguous_format
                models.unet.to(memory_format=fmt)
                models.vae.to(memory_format=fmt)
                peak, peak_source = peak_for(info["name"], dtype_name, args.peak_tflops)
                config = {
                    "dtype": dtype_name,
                    "channels_last": switch(layout),
                    "fuse_lora": switch(fuse),
                    "compile": switch(compiled),
                    "sdpa": sdpa,
                    "setup_s": round(setup_s, 2),
                    "peak_tflops": peak,
                    "peak_source": peak_source,
                }
                with sdpa_context(sdpa):
                    result = config | measure(replace_size(base, size), size, faces, args, useful[size], peak)
                report["results"].append(result)
                print_result(result)
                write_report(report, args.out)
        del models, base
        gc.collect()
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def useful_flops(tiny: bool, face_sizes: list[int]) -> dict[int, int]:
    """FLOPs of one UNet call for one face with the FaceID LoRA fused, per face size: counted on the
    meta device (full size: nothing is computed), the basis of every configuration's MFU."""
    import torch

    models = build_models(tiny, torch.device("meta"), torch.bfloat16)
    optimize_for_inference(models, fuse_lora=True)
    rp = ReversePersonalization(models, None, MethodConfig())
    return {size: count_unet_call(replace_size(rp, size), size)["flops"] for size in face_sizes}


def replace_size(rp: ReversePersonalization, face_size: int) -> ReversePersonalization:
    clone = ReversePersonalization(rp.models, None, replace(rp.method, face_size=face_size))
    clone.text = rp.text
    return clone


def count_only(args: argparse.Namespace) -> dict[str, Any]:
    """Full-size models on the meta device: parameter count, FLOPs and aten ops per UNet call."""
    import torch

    results = []
    for fuse in args.fuse_lora:
        models = build_models(False, torch.device("meta"), torch.bfloat16)
        optimize_for_inference(models, fuse_lora=switch(fuse))
        rp = ReversePersonalization(models, None, MethodConfig())
        parameters = sum(p.numel() for p in models.unet.parameters())
        for size in args.face_sizes:
            counted = count_unet_call(replace_size(rp, size), size)
            results.append(
                {
                    "fuse_lora": switch(fuse),
                    "face_size": size,
                    "unet_parameters": parameters,
                    "unet_flops_per_face_call": counted["flops"],
                    "aten_ops_per_call": counted["aten_ops"],
                    "vae_flops_per_face": count_vae(models, size),  # encode + decode, float32
                    # 2 phases x N steps x one call (both branches of the face)
                    "tflop_per_face": {str(n): round(2 * n * counted["flops"] / 1e12, 1) for n in args.steps},
                }
            )
            print(json.dumps(results[-1]))
    return {
        "benchmark": "core_gpu --count-only",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "device": {"name": "meta (no compute)"},
        "results": results,
    }


def print_result(r: dict[str, Any]) -> None:
    mfu = f"{100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f}" if r["mfu"] is not None else "n/a (no peak known)"
    per_face = ", ".join(f"N={n}: {s:.3f}s" for n, s in r["seconds_per_face"].items())
    print(
        f"{r['face_size']:>5}px x{r['faces_per_batch']} {r['dtype']:<8} cl={int(r['channels_last'])} "
        f"fuse={int(r['fuse_lora'])} compile={int(r['compile'])} sdpa={r['sdpa']:<5} | "
        f"{r['unet_loop_tflops']:8.2f} TFLOP/s, MFU {mfu} | s/face {per_face}",
        flush=True,
    )


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny components on the CPU (proves the script)")
    p.add_argument("--count-only", action="store_true", help="full-size FLOPs on meta tensors, no timing")
    p.add_argument("--device", default="cuda")
    p.add_argument("--face-sizes", type=int, nargs="+")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 50, 25], help="N to report seconds per face for")
    p.add_argument("--batches", type=int, nargs="+", help="faces per UNet batch")
    p.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--channels-last", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--fuse-lora", nargs="+", choices=["off", "on"], default=["on"])
    p.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"])
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune, reduce-overhead")
    p.add_argument("--sdpa", nargs="+", choices=["auto", "flash", "efficient", "cudnn", "math"], default=["auto"])
    p.add_argument("--timed-steps", type=int, nargs=2, metavar=("N1", "N2"), help="the two step counts timed")
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs per step count")
    p.add_argument("--exact", action="store_true", help="also run every --steps value for real")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak (overrides the table)")
    p.add_argument("--budget-s", type=float, default=480.0, help="start no configuration after this many seconds")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/...)")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.face_sizes = args.face_sizes or ([128, 64] if tiny else [1024, 512])
    args.batches = args.batches or ([1, 2] if tiny else [1, 2, 4, 8])
    args.dtypes = args.dtypes or (["float32"] if tiny else ["bfloat16", "float16"])
    args.timed_steps = args.timed_steps or ([2, 4] if tiny else [5, 15])
    if args.timed_steps[0] >= args.timed_steps[1]:
        p.error("--timed-steps: N1 must be smaller than N2")
    for n in args.steps + args.timed_steps:
        make_timesteps(MethodConfig.skip, n)  # refuses step counts the schedule cannot hold
    if args.out is None:
        name = "count" if args.count_only else "tiny-cpu" if tiny else "gpu"
        args.out = ROOT / "benchmarks" / "results" / f"core_gpu-{name}.json"
    return args


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    import warnings

    from raypipe.anonymize.models import quiet_loaders

    with quiet_loaders(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with quiet():
        report = count_only(args) if args.count_only else run_grid(args)
    write_report(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
