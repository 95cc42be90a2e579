"""Edit-friendly inversion and noise-map replay (METHOD.md sections 5 and 6), batched over faces.

Inversion noises the clean latent independently at every timestep, then solves, step by step, for
the noise map ``z_s`` that makes the solver land exactly on the next noised latent. Sampling replays
those maps from ``x_start`` under another conditioning: the maps pin structure (pose, expression,
gaze, background) while the guidance changes identity. Replaying with the inversion's own
conditioning gives back the clean latent to round-off, which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raypipe.anonymize.schedule import SDEDPMSolver2M, step_pairs

if TYPE_CHECKING:
    import torch

    from raypipe.anonymize.guidance import Denoiser


@dataclass
class Inversion:
    """What sampling needs: the start latent and one noise map per step, for B faces."""

    x_start: torch.Tensor  # (B, C, h, w)
    noise_maps: torch.Tensor  # (N, B, C, h, w)


def noised_latents(
    x0: torch.Tensor, timesteps: Sequence[int], solver: SDEDPMSolver2M, seeds: Sequence[int]
) -> torch.Tensor:
    """``alpha_t x0 + sigma_t n_t`` with an independent ``n_t`` per timestep and face.

    Each face draws its noise from its own CPU generator seeded with its seed, so a face gets the same
    noise whatever batch it is in and whatever device runs it. Returns (N+1, B, C, h, w): index i holds
    timestep ``timesteps[i]``, the last index the clean latent (the target after the final step).
    """
    import torch

    if len(seeds) != x0.shape[0]:
        raise ValueError(f"need one seed per face: {len(seeds)} seeds for {x0.shape[0]} faces")
    n = len(timesteps)
    noise = torch.stack(
        [
            torch.randn((n, *x0.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
            for seed in seeds
        ],
        dim=1,
    )
    # On CUDA from page-locked memory, so the copy runs asynchronously with the GPU's work.
    cuda = x0.device.type == "cuda"
    noise = (noise.pin_memory() if cuda else noise).to(x0.device, non_blocking=cuda)
    alpha = torch.tensor(solver.schedule.alpha[list(timesteps)], dtype=torch.float32, device=x0.device)
    sigma = torch.tensor(solver.schedule.sigma[list(timesteps)], dtype=torch.float32, device=x0.device)
    shape = (n,) + (1,) * x0.dim()
    noisy = alpha.view(shape) * x0.unsqueeze(0) + sigma.view(shape) * noise
    return torch.cat([noisy, x0.unsqueeze(0)], dim=0)


def invert(
    x0: torch.Tensor,
    timesteps: Sequence[int],
    denoise: Denoiser,
    solver: SDEDPMSolver2M,
    seeds: Sequence[int],
) -> Inversion:
    """Solve for the noise maps that carry the trajectory through the independently noised latents."""
    import torch

    xts = noised_latents(x0.float(), timesteps, solver, seeds)
    noise_maps = torch.empty_like(xts[:-1])
    solver.reset()
    for i, (s, t) in enumerate(step_pairs(list(timesteps))):
        mu, noise_scale = solver.mean(xts[i], denoise(xts[i], s), s, t)
        z = (xts[i + 1] - mu) / noise_scale
        noise_maps[i] = z
        # Continue from the value the solver will reproduce, not the ideal one: keeps replay exact.
        xts[i + 1] = mu + noise_scale * z
    return Inversion(x_start=xts[0], noise_maps=noise_maps)


def replay(inversion: Inversion, timesteps: Sequence[int], denoise: Denoiser, solver: SDEDPMSolver2M) -> torch.Tensor:
    """Sample from ``x_start`` with the stored noise maps; the solver starts with no history."""
    solver.reset()
    x = inversion.x_start
    for i, (s, t) in enumerate(step_pairs(list(timesteps))):
        x = solver.step(x, denoise(x, s), s, t, inversion.noise_maps[i])
    return x


# --------------------------------------------------------------------------- VAE


def encode_crops(vae: Any, crops: torch.Tensor) -> torch.Tensor:
    """uint8-range crops (B, 3, H, W) in [0, 255] -> scaled latent **mode** (float32 VAE).

    One face at a time: the VAE's activations at 1024 px are ~2.5 GiB per face, so its peak memory is
    that of one face whatever the batch (the UNet, not the VAE, decides how many faces fit).
    """
    import torch

    device = next(vae.parameters()).device
    latents = []
    with torch.inference_mode():
        for crop in crops:
            pixels = (crop[None].float() / 127.5 - 1.0).to(device=device, dtype=torch.float32)
            latents.append(vae.encode(pixels).latent_dist.mode())
    return torch.cat(latents) * vae.config.scaling_factor


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> float pixels in [0, 255] (B, 3, H, W), one face at a time (see
    :func:`encode_crops`); non-finite values are kept for the caller to detect (a face whose result is
    not finite must fail closed, not be clamped into shape)."""
    import torch

    with torch.inference_mode():
        pixels = [vae.decode(latent[None].float() / vae.config.scaling_factor).sample for latent in latents]
    return (torch.cat(pixels).float() + 1.0) * 127.5
