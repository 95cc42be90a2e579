"""Stage model weights once into a bucket (or folder) that every cluster worker loads them from.

``raypipe models pull --to s3://BUCKET/models/v1`` writes::

    s3://BUCKET/models/v1/sdxl/         SDXL base 1.0 as a diffusers folder (fp32 safetensors + configs)
    s3://BUCKET/models/v1/ip-adapter/   ip-adapter-faceid_sdxl.bin (h94/IP-Adapter-FaceID)
    s3://BUCKET/models/v1/buffalo_l/    insightface's buffalo_l detector and recognizer (.onnx)

and prints the ``models:`` block of a job config pointing there. Workers then fetch each folder once into
their local cache (:func:`raypipe.io.materialize`). Workers cache by URI, so a prefix is never reused for
other weights: pulling into a prefix that already holds objects is refused unless ``--overwrite``.

``--preset tiny`` stages tiny random models in the same layout instead (no download; for tests and
trying the cluster path without real weights); they load through the production path (``preset: sdxl``).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raypipe.config import ConfigError, ModelsConfig
from raypipe.io.retry import retry
from raypipe.io.storage import StorageOptions, filesystem, join, redact
from raypipe.logs import get_logger

log = get_logger(__name__)

# ModelsConfig field -> folder under the destination
FOLDERS = {"sdxl": "sdxl", "ip_adapter": "ip-adapter", "vae": "vae"}
# What from_pretrained needs of the SDXL base repo, and nothing else (no fp16 variants, ONNX, Flax, ...).
SDXL_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
DOWNLOAD_HINT = (
    "`raypipe models pull --preset sdxl` downloads from huggingface.co and github.com; run it on a machine "
    "that reaches them, with write access to the destination"
)


class StagingError(RuntimeError):
    """Weights could not be downloaded or uploaded; the message says what to do."""


@dataclass(frozen=True)
class StagedModels:
    """Where the weights went, as the ``models:`` section of a job config."""

    models: dict[str, Any]

    def to_yaml(self, comment: str | None = None) -> str:
        import yaml

        text = yaml.safe_dump({"models": self.models}, sort_keys=False)
        return (f"# {comment}\n" if comment else "") + text


def stage_models(
    destination: str,
    preset: str = "sdxl",
    sources: ModelsConfig | None = None,
    storage: StorageOptions | None = None,
    overwrite: bool = False,
    download_dir: str | None = None,
    seed: int = 0,
) -> StagedModels:
    """Download (``sdxl``) or build (``tiny``) the weights and upload them under ``destination``.

    ``sources`` names the hub ids (``sdxl``, ``ip_adapter``, ``ip_adapter_weight_name``, ``vae``), the
    insightface pack and the analyzer. Hub ids are downloaded, local folders copied as they are; URIs
    (where weights were staged before) fall back to the defaults.
    """
    if preset not in ("sdxl", "tiny"):
        raise ConfigError(f"--preset: must be one of ['sdxl', 'tiny'], got {preset!r}")
    src = _hub_sources(sources or ModelsConfig())
    storage = storage or StorageOptions()
    folders = dict(FOLDERS, insightface=Path(src.insightface).name)
    components = ["sdxl", "ip_adapter"]
    if preset == "sdxl":
        components += ["insightface", *(["vae"] if src.vae else [])]
    targets = {name: join(destination, folders[name]) for name in components}
    _check_targets(targets, storage, overwrite)

    with tempfile.TemporaryDirectory(prefix="raypipe-models-", dir=download_dir) as work:
        if preset == "sdxl":
            local = download_production_models(src, Path(work))
        else:
            local = _write_tiny_models(src, Path(work), seed)
        # Only what loading needs, also when a source is a local copy of a whole hub repository.
        include = {"sdxl": SDXL_FILES, "ip_adapter": (src.ip_adapter_weight_name,), "vae": VAE_FILES}
        for name, uri in targets.items():
            count, size = upload_folder(local[name], uri, storage, include.get(name) if preset == "sdxl" else None)
            log.info("staged %s: %d files, %.1f MB -> %s", name, count, size / 1e6, redact(uri))

    block: dict[str, Any] = {"preset": "sdxl", **{name: targets[name] for name in ("sdxl", "ip_adapter")}}
    block["ip_adapter_weight_name"] = src.ip_adapter_weight_name
    if "vae" in targets:
        block["vae"] = targets["vae"]
    if "insightface" in targets:
        block["insightface"] = targets["insightface"]
    block["analyzer"] = src.analyzer
    return StagedModels(models=block)


def _hub_sources(models: ModelsConfig) -> ModelsConfig:
    """Keep the hub ids and local folders of a job config; its object-store URIs are where staged
    weights live (the shape of the destination, not a source), so those fall back to the defaults."""
    defaults = ModelsConfig()

    def source(value: str | None, default: str | None) -> str | None:
        return default if value is None or "://" in value else value

    return ModelsConfig(
        preset=models.preset,
        sdxl=source(models.sdxl, defaults.sdxl) or defaults.sdxl,
        ip_adapter=source(models.ip_adapter, defaults.ip_adapter) or defaults.ip_adapter,
        ip_adapter_weight_name=models.ip_adapter_weight_name,
        vae=source(models.vae, None),
        analyzer=models.analyzer,
        insightface=source(models.insightface, defaults.insightface) or defaults.insightface,
    )


def _check_targets(targets: Mapping[str, str], storage: StorageOptions, overwrite: bool) -> None:
    for uri in targets.values():
        fs, path = filesystem(uri, storage)
        existing = _list_files(fs, path)
        if not existing:
            continue
        if not overwrite:
            raise StagingError(
                f"{redact(uri)} already holds {len(existing)} file(s). Workers cache weights by URI, so "
                "stage new weights under a new prefix (e.g. .../models/v2), or pass --overwrite to replace "
                "them (then clear the workers' caches)"
            )
        log.warning("removing %d existing file(s) under %s (--overwrite)", len(existing), redact(uri))
        retry(functools.partial(fs.rm, path, recursive=True), description=f"remove {redact(uri)}")
        fs.invalidate_cache(path)


def _list_files(fs: Any, path: str) -> list[str]:
    fs.invalidate_cache(path)
    try:
        found = retry(lambda: fs.find(path), description=f"list {path}")
    except FileNotFoundError:
        return []
    return list(found)


def upload_folder(
    local: Path, uri: str, storage: StorageOptions | None = None, include: tuple[str, ...] | None = None
) -> tuple[int, int]:
    """Copy the non-hidden files under ``local`` (those matching a pattern of ``include``, if given) to
    ``uri``, keeping relative paths; returns (files, bytes)."""
    from fsspec.implementations.local import LocalFileSystem

    fs, base = filesystem(uri, storage)
    files = [
        p
        for p in sorted(local.rglob("*"))
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(local).parts)
        and (include is None or any(fnmatch.fnmatch(p.relative_to(local).as_posix(), i) for i in include))
    ]
    if not files:
        raise StagingError(f"nothing to upload from {local}")
    total = 0
    for path in files:
        relative = path.relative_to(local).as_posix()
        remote = f"{base.rstrip('/')}/{relative}"
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(os.path.dirname(remote), exist_ok=True)
        retry(functools.partial(fs.put_file, str(path), remote), description=f"upload {relative}")
        total += path.stat().st_size
    return len(files), total


# ------------------------------------------------------------------------------------------ sources


def download_production_models(src: ModelsConfig, work: Path) -> dict[str, Path]:
    """SDXL base, IP-Adapter-FaceID, the insightface pack (and a VAE if named): each taken from a local
    folder when ``src`` names one, else downloaded into ``work``."""
    local = {
        "sdxl": _local_or_hub(src.sdxl, SDXL_FILES, work / "sdxl"),
        "ip_adapter": _local_or_hub(src.ip_adapter, (src.ip_adapter_weight_name,), work / "ip-adapter"),
        "insightface": _insightface_pack(src.insightface, work),
    }
    if src.vae:
        local["vae"] = _local_or_hub(src.vae, VAE_FILES, work / "vae")
    return local


def _local_or_hub(source: str, files: tuple[str, ...], target: Path) -> Path:
    folder = Path(source).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        with _explained(source):
            folder = Path(snapshot_download(source, allow_patterns=list(files), local_dir=target))
    missing = [name for name in files if "*" not in name and not (folder / name).is_file()]
    if missing:
        raise StagingError(f"{source}: lacks {missing}; is it the right repository or folder?")
    return folder


@contextlib.contextmanager
def _explained(what: str) -> Iterator[None]:
    """Any download failure becomes a StagingError that says where downloads must run."""
    try:
        yield
    except StagingError:
        raise
    except Exception as exc:  # hub, HTTP, zip and filesystem errors all mean the same to the user
        text = str(exc).strip()
        detail = text.splitlines()[0] if text else "no details"
        raise StagingError(f"could not download {what} ({type(exc).__name__}: {detail}). {DOWNLOAD_HINT}") from exc


def _insightface_pack(pack: str, work: Path) -> Path:
    """A folder of the pack's .onnx files: a local folder as is, else insightface's own download helper
    (a zip from its GitHub releases), keeping only the .onnx files."""
    folder = Path(pack).expanduser()
    if not folder.is_dir():
        from insightface.utils.storage import ensure_available

        # insightface prints progress to stdout, which carries the models: block: send it to stderr.
        with _explained(f"insightface model pack {pack!r}"), contextlib.redirect_stdout(sys.stderr):
            folder = Path(ensure_available("models", pack, root=str(work / "insightface")))
    models = sorted(folder.rglob("*.onnx"))
    if not models:
        raise StagingError(f"insightface model pack {pack!r}: no .onnx files in {folder}")
    staged = work / "insightface-staged"
    staged.mkdir()
    for model in models:
        if (staged / model.name).exists():
            raise StagingError(f"insightface model pack {pack!r} holds two files named {model.name}")
        os.symlink(model.resolve(), staged / model.name)
    return staged


def _write_tiny_models(src: ModelsConfig, work: Path, seed: int) -> dict[str, Path]:
    from raypipe.anonymize.analyzers import EMBEDDING_DIMS
    from raypipe.anonymize.models import TINY_WEIGHT_NAME, save_tiny_models

    if src.ip_adapter_weight_name != TINY_WEIGHT_NAME:
        raise ConfigError(
            f"models.ip_adapter_weight_name: must be {TINY_WEIGHT_NAME!r} for --preset tiny, "
            f"got {src.ip_adapter_weight_name!r}"
        )
    # The FaceID projection must take the embeddings of the analyzer the job will use.
    paths = save_tiny_models(work, id_embed_dim=EMBEDDING_DIMS[src.analyzer], seed=seed)
    return {"sdxl": Path(paths["sdxl"]), "ip_adapter": Path(paths["ip_adapter"])}


# ------------------------------------------------------------------------------------- command


def cmd_models_pull(args: argparse.Namespace) -> int:
    from raypipe.config import load_config

    sources, storage = ModelsConfig(), StorageOptions()
    if args.config:
        config = load_config(args.config, require_io=False)
        sources, storage = config.models, config.storage
    staged = stage_models(
        args.to,
        preset=args.preset,
        sources=sources,
        storage=storage,
        overwrite=args.overwrite,
        download_dir=args.download_dir,
        seed=args.seed,
    )
    comment = (
        "tiny random weights, loaded through the production path"
        if args.preset == "tiny"
        else f"weights staged by `raypipe models pull --to {redact(args.to)}`"
    )
    text = staged.to_yaml(comment)
    print(text, end="")
    if args.write_config:
        Path(args.write_config).write_text(text, encoding="utf-8")
        log.info("wrote the models section to %s", args.write_config)
    return 0


def add_models_commands(subparsers: Any) -> None:
    """Register ``models pull`` on the CLI's subparsers."""
    models = subparsers.add_parser("models", help="stage model weights for a cluster")
    sub = models.add_subparsers(dest="models_command", required=True)
    p = sub.add_parser(
        "pull",
        help="download the weights once and upload them to a bucket or folder workers load from",
        description="Stage SDXL base, IP-Adapter-FaceID and insightface buffalo_l under URI (sdxl/, "
        "ip-adapter/, buffalo_l/) and print the `models:` config block that points there.",
    )
    p.add_argument("--to", required=True, metavar="URI", help="destination prefix, e.g. s3://bucket/models/v1")
    p.add_argument(
        "--preset",
        choices=("sdxl", "tiny"),
        default="sdxl",
        help="sdxl: the real weights (needs internet); tiny: random test models (default sdxl)",
    )
    p.add_argument("--config", metavar="FILE", help="job YAML: its storage section, and models hub ids / analyzer")
    p.add_argument("--write-config", metavar="FILE", help="also write the printed models: block to FILE")
    p.add_argument("--overwrite", action="store_true", help="replace weights already under the destination")
    p.add_argument("--download-dir", metavar="DIR", help="where downloads wait before upload (default: temp)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny random weights (default 0)")
    p.set_defaults(func=cmd_models_pull)


__all__ = [
    "SDXL_FILES",
    "StagedModels",
    "StagingError",
    "add_models_commands",
    "download_production_models",
    "stage_models",
    "upload_folder",
]
