"""Opt-in inference speed-ups (``ModelsConfig.channels_last / fuse_lora / compile``) keep results
equivalent: the same faces to round-off, the FaceID LoRA still in effect, no recompiles per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raypipe.anonymize.guidance import GuidedUNet, TextEncoder, sampling_branches
from raypipe.anonymize.models import FACEID_ADAPTER, ModelLoadError, build_tiny_models, optimize_for_inference
from raypipe.anonymize.pipeline import ReversePersonalization
from raypipe.config import ConfigError, MethodConfig, ModelsConfig

SIZE = 64
METHOD = MethodConfig(num_steps=4, face_size=SIZE, face_batch_size=2)


def _faces(n: int = 2) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]
    embeddings = [e / np.linalg.norm(e) for e in rng.normal(size=(n, 512)).astype(np.float32)]
    return crops, embeddings, [11 + i for i in range(n)]


def _anonymized(rp: ReversePersonalization) -> np.ndarray:
    out = rp.anonymize_crops(*_faces())
    assert all(o is not None for o in out)
    return np.stack(out).astype(int)  # type: ignore[arg-type]


def _eps(models) -> torch.Tensor:
    text = TextEncoder(models)
    identity = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(1)), dim=1)
    u, c = sampling_branches(text, identity, 1.0, None)
    x = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(2))
    return GuidedUNet(models, u, c, -10.0, (SIZE, SIZE, 0, 0, SIZE, SIZE))(x, 299)


@pytest.fixture
def reference() -> tuple[np.ndarray, torch.Tensor]:
    models = build_tiny_models(seed=0)
    return _anonymized(ReversePersonalization(models, None, METHOD)), _eps(models)


def test_channels_last_gives_the_same_faces_to_round_off(reference) -> None:
    models = optimize_for_inference(build_tiny_models(seed=0), channels_last=True)
    assert models.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert models.optimizations == ("channels_last",)
    faces, eps = reference
    assert torch.allclose(_eps(models), eps, rtol=1e-4, atol=1e-4)
    assert np.abs(_anonymized(ReversePersonalization(models, None, METHOD)) - faces).max() <= 1


def test_fused_lora_gives_the_same_faces_and_keeps_the_identity_lora_in_the_weights(reference) -> None:
    models = build_tiny_models(seed=0)
    models.unet.disable_adapters()
    without_lora = _eps(models)
    models.unet.enable_adapters()
    optimize_for_inference(models, fuse_lora=True)
    assert not any("lora" in name for name, _ in models.unet.named_modules())  # no separate LoRA kernels
    faces, eps = reference
    fused = _eps(models)
    assert torch.allclose(fused, eps, rtol=1e-4, atol=1e-4)
    assert (fused - without_lora).abs().max().item() > 1e-3  # the LoRA's effect is in the merged weights
    assert np.abs(_anonymized(ReversePersonalization(models, None, METHOD)) - faces).max() <= 1


def test_fusing_refuses_a_unet_without_the_faceid_lora() -> None:
    models = build_tiny_models(seed=0)
    models.pipe.unload_lora_weights()  # e.g. weights loaded without peft: fusing must not hide that
    with pytest.raises(ModelLoadError, match=FACEID_ADAPTER):
        optimize_for_inference(models, fuse_lora=True)


@pytest.mark.slow
def test_compiled_unet_gives_the_same_faces_with_one_graph_for_every_step(reference) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # The eager backend traces exactly what inductor would compile, without minutes of C++ builds.
    models = optimize_for_inference(build_tiny_models(seed=0), compile=True, compile_backend="eager")
    try:
        faces, _ = reference
        assert np.abs(_anonymized(ReversePersonalization(models, None, METHOD)) - faces).max() <= 1
        # 4 inversion + 4 sampling steps, each with its own timestep: still one graph, no recompiles.
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()


def test_speed_ups_are_on_by_default_and_recorded() -> None:
    rp = ReversePersonalization.from_pretrained(
        ModelsConfig(preset="tiny", analyzer="dlib", device="cpu"), METHOD, load_analyzer=False
    )
    assert rp.models.optimizations == ("fuse_lora", "channels_last")  # compile "auto": CUDA only
    assert rp.describe()["optimizations"] == ["fuse_lora", "channels_last"]
    assert FACEID_ADAPTER not in (getattr(rp.models.unet, "peft_config", None) or {})  # merged
    plain = ReversePersonalization.from_pretrained(
        ModelsConfig(preset="tiny", device="cpu", channels_last=False, fuse_lora=False, compile=False),
        METHOD,
        load_analyzer=False,
    )
    assert plain.models.optimizations == ()
    assert FACEID_ADAPTER in plain.models.unet.peft_config  # switched off: the LoRA stays separate


@pytest.mark.parametrize("name", ["channels_last", "fuse_lora"])
def test_speed_up_switches_must_be_booleans(name: str) -> None:
    with pytest.raises(ConfigError, match=f"models.{name}: must be true or false"):
        ModelsConfig(**{name: "yes"})


def test_compile_is_auto_true_or_false() -> None:
    with pytest.raises(ConfigError, match=r'models\.compile: must be "auto"'):
        ModelsConfig(compile="yes")
    assert ModelsConfig().compile == "auto" and ModelsConfig(compile=False).compile is False
