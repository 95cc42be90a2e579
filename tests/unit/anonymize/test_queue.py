"""The work queue: every UNet call carries exactly ``face_batch_size`` faces (only the last ones can be
short, and are padded to the same shape), and the faces come out as the step-by-step loop makes them
(``invert`` then ``replay``, one face batch at a time), up to round-off. Tiny random SDXL components."""

from __future__ import annotations

import pytest
import torch

from raypipe.anonymize.guidance import GuidedUNet, TextEncoder, inversion_branches, sampling_branches
from raypipe.anonymize.inversion import encode_crops, invert, replay
from raypipe.anonymize.queue import FixedBatchUNet, anonymize_latents
from raypipe.anonymize.schedule import NoiseSchedule, SDEDPMSolver2M, make_timesteps

SIZE = 64
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)
TIMESTEPS = make_timesteps(0.7, 6)


def faces(models, n: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(n)
    crops = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    identity = torch.randn(n, 512, generator=g)
    return encode_crops(models.vae, crops), identity / identity.norm(dim=1, keepdim=True), [100 + i for i in range(n)]


def step_by_step(models, x0, identity, seeds, size: int) -> torch.Tensor:
    """What raypipe did before the queue: face batches of ``size``, each inverted then replayed."""
    text, schedule, out = TextEncoder(models), NoiseSchedule.sdxl(), []
    for start in range(0, x0.shape[0], size):
        rows = slice(start, start + size)
        solver = SDEDPMSolver2M(schedule)
        u, c = inversion_branches(text, x0[rows].shape[0], models.id_embed_dim)
        inversion = invert(x0[rows], TIMESTEPS, GuidedUNet(models, u, c, -10.0, TIME_IDS), solver, seeds[rows])
        u, c = sampling_branches(text, identity[rows], 1.0, "an elderly man")
        out.append(replay(inversion, TIMESTEPS, GuidedUNet(models, u, c, -10.0, TIME_IDS), solver))
    return torch.cat(out)


def queued(models, x0, identity, seeds, size: int) -> tuple[torch.Tensor, FixedBatchUNet]:
    text, schedule = TextEncoder(models), NoiseSchedule.sdxl()
    unet = FixedBatchUNet(models, -10.0, TIME_IDS, size)
    latents = anonymize_latents(
        x0,
        TIMESTEPS,
        unet,
        lambda: SDEDPMSolver2M(schedule),
        seeds,
        inversion_branches(text, x0.shape[0], models.id_embed_dim),
        sampling_branches(text, identity, 1.0, "an elderly man"),
    )
    return latents, unet


@pytest.mark.parametrize(("count", "size"), [(1, 1), (3, 2), (5, 4), (4, 4)])
def test_the_queue_gives_the_step_by_step_result(tiny_models, count: int, size: int) -> None:
    x0, identity, seeds = faces(tiny_models, count)
    expected = step_by_step(tiny_models, x0, identity, seeds, size)
    got, _ = queued(tiny_models, x0, identity, seeds, size)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=2e-4), (got - expected).abs().max()  # measured 4.5e-5


def test_every_call_is_full_but_the_last_ones_and_all_have_one_shape(tiny_models) -> None:
    x0, identity, seeds = faces(tiny_models, 5)
    shapes: list[int] = []
    hook = tiny_models.unet.register_forward_pre_hook(lambda module, args: shapes.append(args[0].shape[0]))
    try:
        _, unet = queued(tiny_models, x0, identity, seeds, 4)
    finally:
        hook.remove()
    steps = len(TIMESTEPS)
    # 5 faces x 6 steps = 30 evaluations per phase, 4 per call: 7 full calls and one of 2, twice.
    assert unet.log == [4] * 7 + [2] + [4] * 7 + [2]
    assert set(shapes) == {8}  # 4 faces x 2 branches in every call: one static shape, padding included
    assert len(unet.log) < 2 * steps * 2  # the step-by-step loop made 24 calls, 12 of them with 1 face


def test_a_face_does_not_depend_on_its_neighbours(tiny_models) -> None:
    x0, identity, seeds = faces(tiny_models, 3)
    together, _ = queued(tiny_models, x0, identity, seeds, 2)
    alone, _ = queued(tiny_models, x0[1:2], identity[1:2], seeds[1:2], 2)
    assert torch.allclose(together[1:2], alone, atol=2e-4)
