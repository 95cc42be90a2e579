"""The models behind Reverse Personalization, loaded once and shared by every face.

Two ways to get them:

- :func:`load_models` (production): SDXL base, IP-Adapter-FaceID SDXL through diffusers'
  ``load_ip_adapter`` (its embedded LoRA loaded through ``peft``), each from a hub id, a local
  folder or an object-store URI (fetched once into a local cache).
- :func:`build_tiny_models` (tests, laptops without weights): the very same classes, random
  initialised from small configs, offline, in well under a second. :func:`save_tiny_models` writes
  them in the production layout so the production loading path can be exercised on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raypipe.config import ModelsConfig
from raypipe.io.storage import redact
from raypipe.logs import get_logger

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionXLPipeline

log = get_logger(__name__)

FACEID_ADAPTER = "faceid_0"  # the adapter name diffusers gives the first IP-Adapter's embedded LoRA
TINY_WEIGHT_NAME = "ip-adapter-faceid_sdxl.bin"


class ModelLoadError(RuntimeError):
    """Weights could not be loaded, or loaded incompletely (e.g. the FaceID LoRA was skipped)."""


@dataclass
class Models:
    """Loaded components. ``pipe`` is only a container for diffusers' loaders: its ``__call__`` is
    never used (stock SDXL pipelines drop the guidance branches for w <= 1, see METHOD.md)."""

    pipe: StableDiffusionXLPipeline
    device: torch.device
    dtype: torch.dtype  # UNet and text encoders; the VAE always runs in float32
    id_embed_dim: int
    sources: dict[str, str] = field(default_factory=dict)  # component -> hub id / folder / URI
    weight_hashes: dict[str, str] = field(default_factory=dict)  # component -> sha256 of its weight files
    optimizations: tuple[str, ...] = ()  # speed-ups applied by optimize_for_inference, in order

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)


# --------------------------------------------------------------------------- device and dtype


@contextmanager
def quiet_loaders() -> Iterator[None]:
    """diffusers/transformers warn about things that are expected here (no image encoder, no text
    encoder LoRA); keep their loggers at error level while raypipe loads."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])


def resolve_device(spec: str = "auto") -> torch.device:
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Half precision only where it is fast and supported: on CPU everything runs in float32."""
    import torch

    if device.type == "cpu":
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# --------------------------------------------------------------------------- production loading


def _is_remote(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def resolve_source(spec: str, cache_dir: str | None) -> str:
    """An object-store URI is fetched into the local cache once; hub ids and folders pass through."""
    if spec.startswith("file://"):
        return spec[len("file://") :]
    if _is_remote(spec):
        from raypipe.io.cache import materialize

        return materialize(spec, cache_dir=cache_dir)
    return spec


HUB_CACHE: str | None = None  # the Hugging Face cache to look in (None: huggingface_hub's default)


def hub_snapshot(spec: str) -> tuple[str, str] | None:
    """(snapshot folder, commit) of a Hugging Face hub id that is already in the local cache, else None
    (a local folder, an object-store URI, or an id not downloaded yet)."""
    if "://" in spec or Path(spec).exists() or spec.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(spec, local_files_only=True, cache_dir=HUB_CACHE)
    except Exception:  # not cached (or no such id): diffusers downloads it
        return None
    return str(folder), Path(folder).name


def pinned_source(spec: str, cache_dir: str | None, complete: Any) -> tuple[str, str]:
    """(what to load, how the audit names it): a hub id already cached, whose snapshot folder holds what
    is needed (``complete(folder)``), loads from that folder and is recorded with its commit
    (``org/name@<commit>``), so loading and hashing read the same files; a partial snapshot is left to
    diffusers, which fetches what is missing. An object-store URI is fetched into the cache; a folder
    passes through."""
    snapshot = hub_snapshot(spec)
    if snapshot is not None and complete(Path(snapshot[0])):
        return snapshot[0], f"{spec}@{snapshot[1]}"
    return resolve_source(spec, cache_dir), redact(spec)


def require_peft() -> None:
    """IP-Adapter-FaceID carries a LoRA that diffusers silently skips without peft: refuse instead."""
    if importlib.util.find_spec("peft") is None:
        raise ModelLoadError(
            "the IP-Adapter-FaceID LoRA needs the 'peft' package, which is not installed; "
            "without it the identity conditioning would be silently incomplete (pip install peft)"
        )


def attach_faceid_adapter(
    pipe: StableDiffusionXLPipeline,
    source: str | dict[str, Any],
    weight_name: str,
    ip_adapter_scale: float = 1.0,
) -> None:
    """Load IP-Adapter-FaceID (projection, IP attention, embedded LoRA) and prove the LoRA is active."""
    require_peft()
    with quiet_loaders():
        pipe.load_ip_adapter(source, subfolder="", weight_name=weight_name, image_encoder_folder=None)
    peft_config = getattr(pipe.unet, "peft_config", None) or {}
    if FACEID_ADAPTER not in peft_config:
        raise ModelLoadError(
            f"IP-Adapter-FaceID from {source if isinstance(source, str) else '<state dict>'} loaded without "
            f"its LoRA (no '{FACEID_ADAPTER}' adapter on the UNet); diffusers skips it when its PEFT "
            "backend is unavailable. Install a peft version that diffusers accepts."
        )
    pipe.set_ip_adapter_scale(ip_adapter_scale)


def load_models(config: ModelsConfig, ip_adapter_scale: float = 1.0) -> Models:
    """Load the production models named by ``config`` (hub ids, local folders or object-store URIs)."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)

    def pipeline_complete(folder: Path) -> bool:
        return (folder / "model_index.json").is_file() and bool(component_weight_files(folder / "unet", config.variant))

    def vae_complete(folder: Path) -> bool:
        return any(
            bool(component_weight_files(f, None)) for f in (folder, folder / "vae") if (f / "config.json").is_file()
        )

    sdxl_path, sdxl_name = pinned_source(config.sdxl, config.cache_dir, pipeline_complete)
    vae_path, vae_name = (
        pinned_source(config.vae, config.cache_dir, vae_complete) if config.vae else (sdxl_path, f"{sdxl_name}/vae")
    )
    log.info("loading SDXL from %s (%s on %s)", sdxl_name, dtype, device)
    try:
        pipe, vae_files = load_pipeline(sdxl_path, dtype, config.variant, vae_path)
        ip_path, ip_name = pinned_source(
            config.ip_adapter, config.cache_dir, lambda folder: (folder / config.ip_adapter_weight_name).is_file()
        )
        log.info("loading IP-Adapter-FaceID from %s/%s", redact(config.ip_adapter), config.ip_adapter_weight_name)
        attach_faceid_adapter(pipe, ip_path, config.ip_adapter_weight_name, ip_adapter_scale)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load models ({config.sdxl}, {config.ip_adapter}): {exc}") from exc
    pipe.to(device)
    _freeze(pipe)
    hashed = {
        "sdxl": [(f"{p.parent.name}/{p.name}", p) for p in pipeline_weight_files(sdxl_path, config.variant, ("vae",))],
        "vae": [(p.name, p) for p in vae_files],
        "ip_adapter": [(config.ip_adapter_weight_name, Path(ip_path, config.ip_adapter_weight_name))],
    }
    return Models(
        pipe=pipe,
        device=device,
        dtype=dtype,
        id_embed_dim=_id_embed_dim(pipe),
        sources={
            "sdxl": sdxl_name + (f" ({config.variant})" if config.variant else ""),
            "ip_adapter": f"{ip_name}/{config.ip_adapter_weight_name}",
            "vae": vae_name,
        },
        weight_hashes=_weight_hashes(hashed),
    )


def load_pipeline(
    sdxl_path: str, dtype: torch.dtype, variant: str | None, vae_path: str | None = None
) -> tuple[StableDiffusionXLPipeline, list[Path]]:
    """The SDXL pipeline in ``dtype`` with its VAE loaded apart in float32 (METHOD.md: the VAE runs in
    fp32; loading it with the rest would round its weights through ``dtype`` first).

    ``vae_path``: a VAE folder, or a pipeline folder whose ``vae/`` is used (default: ``sdxl_path``).
    The VAE's fp32 files are preferred; a folder with only ``variant`` files is loaded from those (and
    upcast), with a warning. Returns the pipeline and the VAE weight files that were read.
    """
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    vae_path = vae_path or sdxl_path
    subfolder = "vae" if Path(vae_path, "vae", "config.json").is_file() or vae_path == sdxl_path else None
    with quiet_loaders():
        try:
            vae = AutoencoderKL.from_pretrained(vae_path, subfolder=subfolder, torch_dtype=torch.float32)
            vae_variant = None
        except (OSError, ValueError):
            if variant is None:
                raise
            log.warning("the VAE in %s has only %s weights: loading those, upcast to float32", vae_path, variant)
            vae = AutoencoderKL.from_pretrained(
                vae_path, subfolder=subfolder, torch_dtype=torch.float32, variant=variant
            )
            vae_variant = variant
        pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_path, torch_dtype=dtype, variant=variant, vae=vae)
    pipe.vae.to(dtype=torch.float32)
    folder = Path(vae_path, subfolder) if subfolder else Path(vae_path)
    return pipe, component_weight_files(folder, vae_variant)


WEIGHT_SUFFIXES = (".safetensors", ".bin")


def component_weight_files(folder: Path, variant: str | None) -> list[Path]:
    """The weight files diffusers reads from one component folder (``unet/``, ``vae/``, ...): those of
    ``variant`` (``*.fp16.safetensors``) or those without one, safetensors preferred over ``.bin``,
    every shard of a sharded checkpoint. Empty for a folder that is not local (a hub id)."""
    if not folder.is_dir():
        return []
    for suffix in WEIGHT_SUFFIXES:
        found = []
        for path in sorted(folder.iterdir()):
            parts = path.name.split(".")
            if not path.is_file() or not path.name.endswith(suffix):
                continue
            named_variant = parts[-2] if len(parts) >= 3 else None
            if named_variant == variant or (variant is None and named_variant is None):
                found.append(path)
        if found:
            return found
    return []


def pipeline_weight_files(path: str, variant: str | None, skip: tuple[str, ...] = ()) -> list[Path]:
    """The weight files a diffusers pipeline folder's components load (from its ``model_index.json``),
    leaving out ``skip`` (e.g. the VAE, loaded apart) and every file no component reads."""
    import json

    index = Path(path, "model_index.json")
    if not index.is_file():
        return []
    components = [name for name, value in json.loads(index.read_text()).items() if isinstance(value, list)]
    files: list[Path] = []
    for name in sorted(set(components) - set(skip)):
        files += component_weight_files(Path(path, name), variant)
    return files


# --------------------------------------------------------------------------- inference speed-ups


def optimize_for_inference(
    models: Models,
    *,
    channels_last: bool = False,
    fuse_lora: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
) -> Models:
    """Apply the opt-in speed-ups of :class:`ModelsConfig` to loaded models, in place; returns ``models``.

    - ``channels_last``: UNet and VAE weights in NHWC layout (cuDNN's fast path for convolutions). The
      same arithmetic; kernels may sum in another order (round-off).
    - ``fuse_lora``: merge the FaceID LoRA into the attention weights (W + BA) and drop the separate
      LoRA layers: at SDXL size 4,348 instead of 7,148 operators (kernel launches) and 4.7 % fewer
      FLOPs per UNet call. The merged weight is rounded once to the model dtype: round-off changes.
    - ``compile``: ``torch.compile`` the UNet in place (``compile_mode``: e.g. ``"max-autotune"``, or
      ``"reduce-overhead"`` for CUDA graphs). The first call per batch shape compiles; fused kernels
      round differently and autotuning may pick other kernels on another run, so pixels are
      reproducible only to round-off, not bit for bit.
    """
    import torch

    applied = list(models.optimizations)
    if fuse_lora and "fuse_lora" not in applied:
        if FACEID_ADAPTER not in (getattr(models.unet, "peft_config", None) or {}):
            raise ModelLoadError(f"fuse_lora: the UNet has no '{FACEID_ADAPTER}' LoRA to fuse")
        with quiet_loaders():
            models.pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=[FACEID_ADAPTER])
            models.pipe.unload_lora_weights()  # keeps the merged weights, drops the LoRA layers
        applied.append("fuse_lora")
    if channels_last and "channels_last" not in applied:
        models.unet.to(memory_format=torch.channels_last)
        models.vae.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if compile and not any(a.startswith("compile") for a in applied):
        # Static shapes: one graph per face batch size seen (at most face_batch_size of them), each with
        # kernels specialised to it, instead of one slower dynamic-shape graph after the second size.
        models.unet.compile(mode=compile_mode, backend=compile_backend, dynamic=False)
        applied.append(f"compile({compile_backend}{', ' + compile_mode if compile_mode else ''})")
    models.optimizations = tuple(applied)
    if applied:
        log.info("inference speed-ups: %s", ", ".join(applied))
    return models


def _freeze(pipe: StableDiffusionXLPipeline) -> None:
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
        module.eval()


def _id_embed_dim(pipe: StableDiffusionXLPipeline) -> int:
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    return int(projection.ff.net[0].proj.in_features)


def files_hash(paths: Any) -> str:
    """The sha256 :func:`_weight_hashes` gives a component made of these files (e.g. an analyzer's
    ``model_files``: insightface's two ONNX models, dlib's .dat files)."""
    return _weight_hashes({"files": [(Path(p).name, Path(p)) for p in paths]})["files"]


def _weight_hashes(files: dict[str, list[tuple[str, Path]]]) -> dict[str, str]:
    """sha256 over each component's weight files, the ones actually loaded, so a run records exactly
    which weights it used: each file's name (as given: relative to its component, so the same files
    hash the same wherever they lie) and its own sha256 (:func:`file_sha256`), in order.

    Hub ids that are not local folders are resolved by diffusers into its cache; those are recorded
    as ``unresolved`` rather than guessed.
    """
    hashes: dict[str, str] = {}
    for name, named in files.items():
        present = [(label, path) for label, path in named if path.is_file()]
        if not present:
            hashes[name] = "unresolved"
            continue
        digest = hashlib.sha256()
        for label, path in present:
            digest.update(f"{label}\0{file_sha256(path)}\n".encode())
        hashes[name] = digest.hexdigest()
    return hashes


HASH_CACHE = "file-sha256.json"  # in the model cache folder: sha256 by (path, size, mtime)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, remembered by its identity (resolved path, size, modification time) in
    :data:`HASH_CACHE` under the model cache, so SDXL's 7 GB are read once per machine, not at every
    load. A file rewritten in any way (even to the same size and modification time, as ``cp -p`` does)
    has a new inode or change time, so it is read again."""
    import json

    from raypipe.io.cache import default_cache_dir

    stat = path.stat()
    # ctime and the inode change whenever the content is rewritten, even when a copy keeps size and mtime.
    identity = f"{path.resolve()}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"
    cache = Path(default_cache_dir()) / HASH_CACHE
    known: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):  # no cache yet, or a torn one: read the file itself
        known = dict(json.loads(cache.read_text()))
    if identity in known:
        return known[identity]
    digest = _read_sha256(path)
    known[identity] = digest
    try:  # atomic replace: concurrent loaders may lose an entry, never corrupt the file
        import tempfile

        cache.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{cache.name}.", dir=cache.parent)
        with os.fdopen(handle, "w") as fh:
            fh.write(json.dumps(known, sort_keys=True))
        os.replace(temporary, cache)
    except OSError as error:
        log.debug("weight hash cache not written (%s): %s", cache, error)
    return digest


def _read_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- tiny random models


def _tiny_tokenizer(max_length: int = 77) -> Any:
    """A character-level CLIP tokenizer built in code: no download, same class as production."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=max_length,
    )


def tiny_faceid_state_dict(pipe: StableDiffusionXLPipeline, id_embed_dim: int, rank: int = 4) -> dict:
    """Random IP-Adapter-FaceID weights in the layout of ``ip-adapter-faceid_sdxl.bin``.

    ``image_proj``: the FaceID MLP (id_embed_dim -> 2*id_embed_dim -> 4 tokens x cross_dim) and its
    LayerNorm. ``ip_adapter``: per attention processor (enumerated in the UNet's order), a LoRA on
    q/k/v/out; cross-attention processors (odd ids) also get the IP key/value projections.
    """
    import torch

    unet = pipe.unet
    cross_dim = unet.config.cross_attention_dim
    num_tokens = 4
    g = torch.Generator().manual_seed(1234)

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    image_proj = {
        "proj.0.weight": rand(2 * id_embed_dim, id_embed_dim),
        "proj.0.bias": rand(2 * id_embed_dim),
        "proj.2.weight": rand(num_tokens * cross_dim, 2 * id_embed_dim),
        "proj.2.bias": rand(num_tokens * cross_dim),
        "norm.weight": torch.ones(cross_dim),
        "norm.bias": torch.zeros(cross_dim),
    }
    ip_adapter: dict[str, torch.Tensor] = {}
    modules = dict(unet.named_modules())
    for key_id, name in enumerate(unet.attn_processors.keys()):
        attn = modules[name[: -len(".processor")]]
        linears = {"to_q": attn.to_q, "to_k": attn.to_k, "to_v": attn.to_v, "to_out": attn.to_out[0]}
        for proj, linear in linears.items():
            # LoRA up weights are non-zero on purpose: a zero "up" would make the LoRA a no-op.
            ip_adapter[f"{key_id}.{proj}_lora.down.weight"] = rand(rank, linear.in_features)
            ip_adapter[f"{key_id}.{proj}_lora.up.weight"] = rand(linear.out_features, rank)
        if name.endswith("attn2.processor"):
            ip_adapter[f"{key_id}.to_k_ip.weight"] = rand(attn.to_k.out_features, cross_dim)
            ip_adapter[f"{key_id}.to_v_ip.weight"] = rand(attn.to_v.out_features, cross_dim)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL's classes at toy size: UNet with ``text_time`` addition embeddings, an 8x VAE, both CLIP
    text encoders (the second with projection), tokenizers built in code."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=128,
        projection_dim=32,
        max_position_embeddings=77,
        hidden_act="gelu",
    )
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        cross_attention_dim=64,  # 32 + 32: the two text encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids + pooled text embedding
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),  # four levels: the same 8x downsampling as SDXL's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=128,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    tokenizer = _tiny_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=_tiny_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def build_tiny_models(
    id_embed_dim: int = 512, seed: int = 0, ip_adapter_scale: float = 1.0, device: str = "cpu"
) -> Models:
    """Tiny random models through the same loaders as production (IP-Adapter + LoRA via peft)."""
    import torch

    pipe = build_tiny_pipeline(seed)
    attach_faceid_adapter(pipe, tiny_faceid_state_dict(pipe, id_embed_dim), TINY_WEIGHT_NAME, ip_adapter_scale)
    dev = resolve_device(device)
    pipe.to(dev)
    _freeze(pipe)
    return Models(
        pipe=pipe,
        device=dev,
        dtype=torch.float32,
        id_embed_dim=id_embed_dim,
        sources={"sdxl": f"tiny(seed={seed})", "ip_adapter": f"tiny(seed={seed}, id_dim={id_embed_dim})"},
        weight_hashes={"sdxl": "random", "ip_adapter": "random"},
    )


def save_tiny_models(folder: str | os.PathLike[str], id_embed_dim: int = 512, seed: int = 0) -> dict[str, str]:
    """Write tiny random models in the production layout: ``sdxl/`` (a diffusers pipeline folder) and
    ``ip-adapter/ip-adapter-faceid_sdxl.bin``. Returns the two paths, ready for :class:`ModelsConfig`."""
    import torch

    root = Path(folder)
    pipe = build_tiny_pipeline(seed)
    pipe.save_pretrained(root / "sdxl")
    ip_dir = root / "ip-adapter"
    ip_dir.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_faceid_state_dict(pipe, id_embed_dim), ip_dir / TINY_WEIGHT_NAME)
    return {"sdxl": str(root / "sdxl"), "ip_adapter": str(ip_dir)}
