"""Inversion, replay and guidance on tiny random SDXL components (METHOD.md sections 3, 5, 6)."""

from __future__ import annotations

import pytest
import torch

from raypipe.anonymize.guidance import (
    GuidedUNet,
    TextEncoder,
    combine_guidance,
    inversion_branches,
    sampling_branches,
)
from raypipe.anonymize.inversion import encode_crops, invert, noised_latents, replay
from raypipe.anonymize.schedule import NoiseSchedule, SDEDPMSolver2M, make_timesteps

SIZE = 64
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)


def _crops(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


def _identity(n: int, seed: int = 1) -> torch.Tensor:
    e = torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))
    return e / e.norm(dim=1, keepdim=True)


def _latents(models, n: int = 2) -> torch.Tensor:
    return encode_crops(models.vae, _crops(n))


def test_guidance_combination_is_repulsive_for_negative_scale() -> None:
    generator = torch.Generator().manual_seed(0)
    eps_u, eps_c = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    assert torch.allclose(combine_guidance(eps_u, eps_c, -10.0), 11 * eps_u - 10 * eps_c, atol=1e-6)
    # eps_u + w (eps_c - eps_u) is exact only up to round-off: compare with an absolute tolerance.
    assert torch.allclose(combine_guidance(eps_u, eps_c, 1.0), eps_c, atol=1e-6)
    assert torch.allclose(combine_guidance(eps_u, eps_c, 0.0), eps_u, atol=1e-6)


@pytest.mark.parametrize("w", [-10.0, 0.0, 1.0, 7.5])
def test_both_branches_run_in_one_unet_batch_for_every_scale(tiny_models, w: float) -> None:
    text = TextEncoder(tiny_models)
    calls: list[int] = []
    hook = tiny_models.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        unconditional, conditional = sampling_branches(text, _identity(3), 1.0, None)
        GuidedUNet(tiny_models, unconditional, conditional, w, TIME_IDS)(torch.randn(3, 4, 8, 8), 299)
    finally:
        hook.remove()
    assert calls == [6]  # 3 faces x 2 branches, one call


def test_attribute_prompt_sits_in_the_unconditional_branch(tiny_models) -> None:
    text = TextEncoder(tiny_models)
    identity = _identity(2)
    plain_u, plain_c = sampling_branches(text, identity, 1.0, None)
    attr_u, attr_c = sampling_branches(text, identity, 1.0, "an elderly man")
    assert torch.count_nonzero(plain_u.text.tokens) == 0 and torch.count_nonzero(plain_u.text.pooled) == 0
    assert torch.equal(attr_u.text.tokens, text("an elderly man").tokens)
    assert not torch.equal(attr_u.text.tokens, text("").tokens)
    assert torch.equal(attr_c.text.tokens, plain_c.text.tokens)  # the conditional branch keeps E("")
    assert torch.count_nonzero(attr_u.identity) == 0  # null identity on the unconditional side
    assert torch.allclose(attr_c.identity, identity)


def test_inversion_branches_use_zero_text_and_empty_prompt_with_null_identity(tiny_models) -> None:
    text = TextEncoder(tiny_models)
    unconditional, conditional = inversion_branches(text, 2, 512)
    assert torch.count_nonzero(unconditional.text.tokens) == 0
    assert torch.equal(conditional.text.tokens, text("").tokens)
    assert torch.count_nonzero(unconditional.identity) == torch.count_nonzero(conditional.identity) == 0


def test_null_identity_gives_nonzero_faceid_tokens(tiny_models) -> None:
    projection = tiny_models.unet.encoder_hid_proj
    tokens = projection([torch.zeros(1, 1, 512)])[0]
    assert tokens.shape == (1, 1, 4, 64)
    assert torch.count_nonzero(tokens) > 0


def test_noised_latents_are_independent_per_timestep_and_seeded_per_face() -> None:
    solver = SDEDPMSolver2M(NoiseSchedule.sdxl())
    x0 = torch.zeros(2, 4, 8, 8)
    a = noised_latents(x0, [299, 200], solver, seeds=[1, 2])
    b = noised_latents(x0[:1], [299, 200], solver, seeds=[1])
    assert torch.equal(a[:, :1], b)  # the same face gets the same noise alone or in a batch
    assert not torch.allclose(a[0, 0] / solver.schedule.sigma[299], a[1, 0] / solver.schedule.sigma[200])
    assert torch.equal(a[-1], x0)  # the target after the last step is the clean latent


def _invert(models, x0: torch.Tensor, steps: int, seeds: list[int]):
    text = TextEncoder(models)
    timesteps = make_timesteps(0.7, steps)
    solver = SDEDPMSolver2M(NoiseSchedule.sdxl())
    u, c = inversion_branches(text, x0.shape[0], models.id_embed_dim)
    denoise = GuidedUNet(models, u, c, -10.0, TIME_IDS)
    return text, timesteps, solver, denoise, invert(x0, timesteps, denoise, solver, seeds)


@pytest.mark.parametrize("steps", [10, 50])
def test_replay_with_the_inversion_conditioning_reproduces_the_latent(tiny_models, steps: int) -> None:
    x0 = _latents(tiny_models)
    _, timesteps, solver, denoise, inversion = _invert(tiny_models, x0, steps, [11, 12])
    assert inversion.noise_maps.shape == (steps, 2, 4, 8, 8)
    back = replay(inversion, timesteps, denoise, solver)
    assert (back - x0).abs().max().item() <= 1e-4


def test_replay_with_the_identity_conditioning_moves_away(tiny_models) -> None:
    x0 = _latents(tiny_models)
    text, timesteps, solver, _, inversion = _invert(tiny_models, x0, 10, [11, 12])
    u, c = sampling_branches(text, _identity(2), 1.0, None)
    out = replay(inversion, timesteps, GuidedUNet(tiny_models, u, c, -10.0, TIME_IDS), solver)
    assert (out - x0).abs().max().item() > 1e-2


def test_faceid_lora_is_loaded_and_changes_the_unet_output(tiny_models) -> None:
    unet = tiny_models.unet
    assert "faceid_0" in unet.peft_config
    lora_layers = [n for n, _ in unet.named_modules() if n.endswith("lora_A.faceid_0")]
    assert len(lora_layers) >= 4 * len(unet.attn_processors)  # q, k, v, out of every attention layer
    text = TextEncoder(tiny_models)
    u, c = sampling_branches(text, _identity(1), 1.0, None)
    denoise = GuidedUNet(tiny_models, u, c, -10.0, TIME_IDS)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with_lora = denoise(x, 299)
    unet.disable_adapters()
    try:
        without_lora = denoise(x, 299)
    finally:
        unet.enable_adapters()
    assert (with_lora - without_lora).abs().max().item() > 1e-3


def test_loading_without_peft_backend_fails_loudly(monkeypatch) -> None:
    import diffusers.loaders.ip_adapter as ip_adapter_module

    from raypipe.anonymize import models as models_module

    # diffusers only warns and skips the LoRA when its PEFT backend is off: raypipe must refuse.
    monkeypatch.setattr(ip_adapter_module, "USE_PEFT_BACKEND", False)
    pipe = models_module.build_tiny_pipeline()
    with pytest.raises(models_module.ModelLoadError, match="without its LoRA"):
        models_module.attach_faceid_adapter(pipe, models_module.tiny_faceid_state_dict(pipe, 512), "x.bin")


def test_missing_peft_package_fails_before_loading(monkeypatch) -> None:
    import importlib.util

    from raypipe.anonymize import models as models_module

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real_find_spec(name, *a)
    )
    with pytest.raises(models_module.ModelLoadError, match="needs the 'peft' package"):
        models_module.require_peft()
