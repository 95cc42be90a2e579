"""Real weight layouts load right: the production loader (``load_models``) on tiny random models saved
in the layouts of the real releases (a diffusers SDXL folder with and without an fp16 variant,
``ip-adapter-faceid_sdxl.bin`` with its ``image_proj`` and ``ip_adapter`` keys)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from raypipe.anonymize.models import (
    ModelLoadError,
    build_tiny_pipeline,
    load_models,
    load_pipeline,
    save_tiny_models,
)
from raypipe.config import ModelsConfig


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return save_tiny_models(tmp_path_factory.mktemp("weights"), id_embed_dim=128)


def config(saved: dict[str, str], **overrides: object) -> ModelsConfig:
    return ModelsConfig(sdxl=saved["sdxl"], ip_adapter=saved["ip_adapter"], device="cpu", **overrides)  # type: ignore[arg-type]


def test_the_vae_is_loaded_apart_in_float32_with_its_exact_weights(saved: dict[str, str]) -> None:
    from diffusers import AutoencoderKL

    pipe, vae_files = load_pipeline(saved["sdxl"], torch.bfloat16, None)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    reference = AutoencoderKL.from_pretrained(saved["sdxl"], subfolder="vae")  # fp32 as saved
    for name, value in reference.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[name], value), name  # never rounded through bf16
    assert [f.parent.name for f in vae_files] == ["vae"]


def test_weight_hashes_cover_what_is_loaded_and_nothing_else(saved: dict[str, str], tmp_path: Path) -> None:
    first = load_models(config(saved)).weight_hashes
    assert set(first) == {"sdxl", "vae", "ip_adapter"}
    assert all(len(value) == 64 for value in first.values())
    # A file no component reads (an unused variant, another framework's weights) changes nothing.
    folder = tmp_path / "sdxl"
    shutil.copytree(saved["sdxl"], folder)
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"unused")
    (folder / "unet" / "flax_model.msgpack").write_bytes(b"unused")
    again = load_models(config({**saved, "sdxl": str(folder)})).weight_hashes
    assert again == first
    # A changed weight file of a loaded component does.
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet.is_file()
    pipe = build_tiny_pipeline(seed=1)
    pipe.unet.save_pretrained(folder / "unet")
    changed = load_models(config({**saved, "sdxl": str(folder)})).weight_hashes
    assert changed["sdxl"] != first["sdxl"] and changed["vae"] == first["vae"]


def test_an_fp16_only_folder_loads_with_its_variant(saved: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "sdxl-fp16"
    build_tiny_pipeline().to(torch.float16).save_pretrained(folder, variant="fp16")
    assert not list(folder.glob("unet/*model.safetensors"))  # only *.fp16.safetensors
    with pytest.raises(ModelLoadError, match="could not load"):
        load_models(config({**saved, "sdxl": str(folder)}))
    models = load_models(config({**saved, "sdxl": str(folder)}, variant="fp16"))
    assert models.vae.dtype == torch.float32  # upcast from the only weights there are
    assert models.sources["sdxl"].endswith("(fp16)") and models.weight_hashes["vae"] != "unresolved"


def test_models_vae_may_name_a_pipeline_folder_or_a_vae_folder(saved: dict[str, str], tmp_path: Path) -> None:
    other = build_tiny_pipeline(seed=3)
    other.save_pretrained(tmp_path / "pipeline")
    other.vae.save_pretrained(tmp_path / "vae-only")
    expected = other.vae.state_dict()
    for vae in (tmp_path / "pipeline", tmp_path / "vae-only"):
        models = load_models(config(saved, vae=str(vae)))
        assert all(torch.equal(models.vae.state_dict()[k], v) for k, v in expected.items())
        assert models.sources["vae"] == str(vae)


def test_hub_ids_in_the_cache_load_from_their_snapshot_and_are_recorded_with_the_commit(
    saved: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Hugging Face cache as huggingface_hub lays it out, filled from the tiny models (no network).
    import raypipe.anonymize.models as models_module

    commits = {"org/tiny-sdxl": "a" * 40, "org/tiny-faceid": "b" * 40}
    for repo, commit in commits.items():
        root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(commit)
        source = saved["sdxl"] if repo.endswith("sdxl") else saved["ip_adapter"]
        shutil.copytree(source, root / "snapshots" / commit)
    monkeypatch.setattr(models_module, "HUB_CACHE", str(tmp_path / "hub"))
    models = load_models(ModelsConfig(sdxl="org/tiny-sdxl", ip_adapter="org/tiny-faceid", device="cpu"))
    assert models.sources["sdxl"] == f"org/tiny-sdxl@{'a' * 40}"
    assert models.sources["ip_adapter"].startswith(f"org/tiny-faceid@{'b' * 40}/")
    assert models.sources["vae"] == f"org/tiny-sdxl@{'a' * 40}/vae"
    assert models.weight_hashes == load_models(config(saved)).weight_hashes  # the same files, hashed
    assert models_module.hub_snapshot("org/not-downloaded") is None


def test_weight_files_are_read_once_per_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import raypipe.anonymize.models as models_module

    monkeypatch.setenv("RAYPIPE_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights v1")
    reads: list[Path] = []
    real = models_module._read_sha256
    monkeypatch.setattr(models_module, "_read_sha256", lambda path: reads.append(path) or real(path))
    first = models_module.file_sha256(weights)
    assert models_module.file_sha256(weights) == first and reads == [weights]  # the second from the cache
    weights.write_bytes(b"weights v2")  # a changed file: new size or mtime, read again
    os.utime(weights, ns=(1, 1))
    assert models_module.file_sha256(weights) != first and len(reads) == 2


def test_a_partial_snapshot_is_not_pinned(
    saved: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import raypipe.anonymize.models as models_module

    root = tmp_path / "hub" / "models--org--partial"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("c" * 40)
    snapshot = root / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(Path(saved["sdxl"], "model_index.json"), snapshot)  # the index only, no weights
    monkeypatch.setattr(models_module, "HUB_CACHE", str(tmp_path / "hub"))
    path, name = models_module.pinned_source("org/partial", None, lambda folder: (folder / "unet").is_dir())
    assert (path, name) == ("org/partial", "org/partial")  # left to diffusers, which fetches what is missing
