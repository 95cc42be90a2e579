"""Timesteps and the SDE-DPM-Solver++ 2M update (METHOD.md section 4)."""

from __future__ import annotations

import itertools

import pytest
import torch

from raypipe.anonymize.schedule import NoiseSchedule, SDEDPMSolver2M, make_timesteps, step_pairs


def test_reference_timesteps_for_skip_07_and_100_steps() -> None:
    steps = make_timesteps(0.7, 100)
    assert len(steps) == 100
    assert steps[:4] == [299, 295, 292, 289]
    assert steps[-3:] == [7, 4, 1]
    assert all(a > b for a, b in itertools.pairwise(steps))
    assert step_pairs(steps)[-1] == (1, 0)


def test_other_skip_values() -> None:
    assert make_timesteps(0.0, 2) == [999, 1]
    assert make_timesteps(0.5, 1) == [499]


@pytest.mark.parametrize(
    ("skip", "steps", "message"),
    [
        (1.0, 10, "skip must be in"),
        (-0.1, 10, "skip must be in"),
        (0.7, 0, "num_steps must be an integer >= 1"),
        (0.7, 2.5, "num_steps must be an integer >= 1"),
        (0.999, 10, "leaves no timestep"),
        (0.99, 100, "too many for skip=0.99"),
    ],
)
def test_invalid_schedule_is_refused_with_a_clear_message(skip: float, steps: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_timesteps(skip, steps)


def test_schedule_matches_sdxl_scaled_linear_betas() -> None:
    from diffusers import DDPMScheduler

    sch = NoiseSchedule.sdxl()
    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert torch.allclose(torch.from_numpy(sch.alpha**2).float(), ref, rtol=1e-5)


@pytest.mark.parametrize("num_steps", [20, 100])
def test_solver_step_equals_diffusers_sde_dpmsolver_pp_2m(num_steps: int) -> None:
    from diffusers import DPMSolverMultistepScheduler

    timesteps = make_timesteps(0.7, num_steps)
    reference = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        final_sigmas_type="sigma_min",
        lower_order_final=False,
    )
    reference.set_timesteps(timesteps=timesteps)
    solver = SDEDPMSolver2M(NoiseSchedule.sdxl())
    g = torch.Generator().manual_seed(0)
    x_ref = x_ours = torch.randn(2, 4, 8, 8, generator=g)
    worst = 0.0
    for s, t in step_pairs(timesteps):
        eps = torch.randn(2, 4, 8, 8, generator=g)
        z = torch.randn(2, 4, 8, 8, generator=g)
        x_ref = reference.step(eps, s, x_ref, variance_noise=z).prev_sample
        x_ours = solver.step(x_ours, eps, s, t, z)
        worst = max(worst, (x_ref - x_ours).abs().max().item())
        x_ours = x_ref.clone()  # compare single steps, not accumulated drift
    assert worst < 1e-4, worst


def test_first_step_after_reset_is_first_order() -> None:
    solver = SDEDPMSolver2M(NoiseSchedule.sdxl())
    x, eps = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    first, _ = solver.mean(x, eps, 299, 295)
    solver.mean(x * 2, eps, 295, 292)  # history now holds a different x0
    solver.reset()
    again, _ = solver.mean(x, eps, 299, 295)
    assert torch.equal(first, again)
