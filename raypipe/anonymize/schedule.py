"""Timesteps, the SDXL noise schedule and the SDE-DPM-Solver++ (2M) update (METHOD.md section 4).

Everything here is plain arithmetic on tensors: no model, no randomness. The solver keeps the one
piece of history the second-order update needs and must be :meth:`~SDEDPMSolver2M.reset` before
inversion and again before sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

NUM_TRAIN_TIMESTEPS = 1000


def make_timesteps(skip: float, num_steps: int) -> list[int]:
    """``int(linspace(1000 - 1000*skip - 1, 1, N))``: descending, truncated toward zero.

    skip=0.7, N=100 gives 299, 295, 292, ..., 4, 1. The solver's target after the last one is 0.
    """
    if not (isinstance(skip, (int, float)) and 0.0 <= skip < 1.0):
        raise ValueError(f"skip must be in [0, 1), got {skip!r}")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    start = NUM_TRAIN_TIMESTEPS - NUM_TRAIN_TIMESTEPS * skip - 1
    if start < 1:
        raise ValueError(f"skip={skip} leaves no timestep above 0 (first timestep would be {start:.0f})")
    steps = [int(t) for t in np.linspace(start, 1, num_steps)]
    if len(set(steps)) != len(steps):
        raise ValueError(
            f"num_steps={num_steps} is too many for skip={skip}: only {int(start)} distinct timesteps "
            f"lie between {int(start)} and 1; use fewer steps or a smaller skip"
        )
    return steps


@dataclass(frozen=True)
class NoiseSchedule:
    """SDXL's scaled-linear schedule (betas 0.00085..0.012 over 1000 steps), indexed by integer timestep.

    Held in float64: the coefficients are scalars, so the precision costs nothing.
    """

    alpha: np.ndarray  # sqrt(abar_t)
    sigma: np.ndarray  # sqrt(1 - abar_t)
    lam: np.ndarray  # log(alpha_t / sigma_t)

    @classmethod
    def sdxl(cls, beta_start: float = 0.00085, beta_end: float = 0.012) -> NoiseSchedule:
        betas = np.linspace(beta_start**0.5, beta_end**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
        abar = np.cumprod(1.0 - betas)
        alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
        return cls(alpha=alpha, sigma=sigma, lam=np.log(alpha / sigma))


class SDEDPMSolver2M:
    """SDE-DPM-Solver++ 2M (midpoint), data prediction from epsilon.

    ``x_t = (sigma_t/sigma_s) e^{-h} x_s + alpha_t (1-e^{-2h}) D0 [+ 0.5 alpha_t (1-e^{-2h}) D1]
    + sigma_t sqrt(1-e^{-2h}) z``, first order on the first step after a reset.
    """

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        self.reset()

    def reset(self) -> None:
        self._prev_x0: torch.Tensor | None = None
        self._prev_lambda: float | None = None

    def mean(self, x_s: torch.Tensor, eps: torch.Tensor, s: int, t: int) -> tuple[torch.Tensor, float]:
        """The deterministic part ``mu`` of the update s -> t and the noise scale; advances history."""
        sch = self.schedule
        alpha_s, sigma_s, lambda_s = sch.alpha[s], sch.sigma[s], sch.lam[s]
        alpha_t, sigma_t, lambda_t = sch.alpha[t], sch.sigma[t], sch.lam[t]
        h = lambda_t - lambda_s
        decay = 1.0 - math.exp(-2.0 * h)
        x0 = (x_s - sigma_s * eps) / alpha_s
        mu = (sigma_t / sigma_s * math.exp(-h)) * x_s + (alpha_t * decay) * x0
        if self._prev_x0 is not None and self._prev_lambda is not None:
            r = (lambda_s - self._prev_lambda) / h
            mu = mu + (0.5 * alpha_t * decay / r) * (x0 - self._prev_x0)
        self._prev_x0, self._prev_lambda = x0, lambda_s
        return mu, float(sigma_t * math.sqrt(decay))

    def step(self, x_s: torch.Tensor, eps: torch.Tensor, s: int, t: int, z: torch.Tensor) -> torch.Tensor:
        """One full update with the given noise map ``z``."""
        mu, noise_scale = self.mean(x_s, eps, s, t)
        return mu + noise_scale * z


def step_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(s, t) for every solver step: each timestep to the next one, the last to timestep 0."""
    return list(zip(timesteps, [*timesteps[1:], 0]))
