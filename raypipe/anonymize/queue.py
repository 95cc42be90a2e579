"""A work queue that keeps every UNet call full: the faces of one call of the anonymizer share UNet
calls of exactly ``size`` faces, whatever their number.

Two kinds of work, with different freedom:

- Inversion. Its UNet inputs are the independently noised latents ``alpha_t x0 + sigma_t n_t``, known
  before any UNet call (METHOD.md section 5), so the N inversion evaluations of every face are
  independent: they run in any grouping, ``size`` at a time. The solver then walks each face's steps
  with those outputs (cheap arithmetic, all faces at once).
- Sampling. Each face's steps are sequential, but different faces at different steps can share a
  call: each call takes the ``size`` faces with the most steps left (longest remaining first), so the
  faces finish together and only the very last calls can run short of faces.

Every call has the same shape: a short call is padded with copies of its first face, whose results
are dropped. Compiled UNets (``torch.compile``, CUDA graphs) then see one static shape.

Results equal those of :func:`~raypipe.anonymize.inversion.invert` and
:func:`~raypipe.anonymize.inversion.replay` on the same faces up to round-off: the inversion's UNet
sees each noised latent as drawn, where the step-by-step loop sees it after one round trip through the
solver's arithmetic (1e-5 on the tiny models). A face's result does not depend on which faces share
its calls beyond the round-off of batched kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from raypipe.anonymize.inversion import noised_latents
from raypipe.anonymize.schedule import SDEDPMSolver2M, step_pairs

if TYPE_CHECKING:
    import torch

    from raypipe.anonymize.guidance import Branch, TextEmbedding
    from raypipe.anonymize.models import Models


class FixedBatchUNet:
    """Guided UNet calls of exactly ``size`` faces, each face with its own timestep and identity.

    ``unconditional_text`` / ``conditional_text``: the two branches' text condition, shared by every
    face of a call (the identities differ per face).
    """

    def __init__(self, models: Models, guidance_scale: float, time_ids: tuple[int, ...], size: int) -> None:
        self.models = models
        self._w = guidance_scale
        self._time_ids = time_ids
        self.size = size
        self.log: list[int] = []  # the faces each call carried, before padding (benchmarks, tests)
        self._timesteps: dict[int, torch.Tensor] = {}
        # Made once, on the device: nothing is copied from the host inside the step loop.
        # (the text pair, its tokens, its pooled embeddings): the pair is held, so it is never mistaken
        self._conditions: list[tuple[tuple[TextEmbedding, TextEmbedding], torch.Tensor, torch.Tensor]] = []
        self._time_ids_on_device: torch.Tensor | None = None

    def announce(self, timesteps: Sequence[int]) -> None:
        """Send every timestep to the device once: none is copied inside the loop."""
        import torch

        on_device = torch.tensor([int(t) for t in timesteps], dtype=torch.int64, device=self.models.device)
        self._timesteps |= {int(t): on_device[i] for i, t in enumerate(timesteps)}

    def __call__(
        self,
        x: torch.Tensor,
        timesteps: Sequence[int],
        texts: tuple[TextEmbedding, TextEmbedding],
        identities: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Guided epsilon for ``k <= size`` faces: ``x`` (k, C, h, w) at ``timesteps`` (k), with the
        unconditional and conditional identities (k, E) each."""
        import torch

        from raypipe.anonymize.guidance import combine_guidance

        k = x.shape[0]
        if not 0 < k <= self.size:
            raise ValueError(f"a call carries 1 to {self.size} faces, got {k}")
        self.log.append(k)
        pad = self.size - k
        if pad:  # copies of the first face: the same shape for every call, their results dropped
            x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
            timesteps = [*timesteps, *[timesteps[0]] * pad]
            identities = tuple(torch.cat([i, i[:1].expand(pad, -1)]) for i in identities)  # type: ignore[assignment]
        models = self.models
        dtype, device = models.dtype, models.device
        tokens, pooled = self._condition(texts)
        identity = torch.cat(identities).to(device=device, dtype=dtype)[:, None, :]  # already there: no copy
        t = torch.stack([self._timestep(s) for s in timesteps])
        time_ids = self._time_ids_tensor()
        with torch.inference_mode():
            eps = models.unet(
                torch.cat([x, x]).to(dtype),
                torch.cat([t, t]),
                encoder_hidden_states=tokens,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids, "image_embeds": [identity]},
                return_dict=False,
            )[0].float()
        eps_u, eps_c = eps.chunk(2)
        return combine_guidance(eps_u, eps_c, self._w)[:k]

    def _condition(self, texts: tuple[TextEmbedding, TextEmbedding]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches' text tokens and pooled embeddings for a full call, made once per text pair."""
        import torch

        for known, tokens, pooled in self._conditions:
            if known[0] is texts[0] and known[1] is texts[1]:
                return tokens, pooled
        n, device = self.size, self.models.device
        tokens = torch.cat([texts[0].tokens.expand(n, -1, -1), texts[1].tokens.expand(n, -1, -1)]).to(device)
        pooled = torch.cat([texts[0].pooled.expand(n, -1), texts[1].pooled.expand(n, -1)]).to(device)
        self._conditions.append((texts, tokens, pooled))
        return tokens, pooled

    def _time_ids_tensor(self) -> torch.Tensor:
        import torch

        if self._time_ids_on_device is None:
            models = self.models
            ids = torch.tensor([self._time_ids], dtype=models.dtype, device=models.device)
            self._time_ids_on_device = ids.expand(2 * self.size, -1)
        return self._time_ids_on_device

    def _timestep(self, t: int) -> torch.Tensor:
        import torch

        if t not in self._timesteps:
            self._timesteps[t] = torch.tensor(int(t), dtype=torch.int64, device=self.models.device)
        return self._timesteps[t]


def anonymize_latents(
    x0: torch.Tensor,
    timesteps: Sequence[int],
    unet: FixedBatchUNet,
    solver_factory: Any,
    seeds: Sequence[int],
    inversion: tuple[Branch, Branch],
    sampling: tuple[Branch, Branch],
) -> torch.Tensor:
    """Invert every face of ``x0`` (F, C, h, w) and sample it again, in full UNet calls; returns the
    sampled latents (F, C, h, w). ``inversion`` / ``sampling``: the (unconditional, conditional)
    branches, with one identity row per face."""
    import torch

    faces = x0.shape[0]
    pairs = step_pairs(list(timesteps))
    unet.announce(timesteps)
    # Identities go to the device once; each call stacks rows of them there (no copy from the host).
    models = unet.models
    on_device = [
        tuple(b.identity.to(device=models.device, dtype=models.dtype) for b in branches)
        for branches in (inversion, sampling)
    ]

    def rows(which: int, faces_of_call: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        unconditional, conditional = on_device[which]
        return (
            torch.stack([unconditional[f] for f in faces_of_call]),
            torch.stack([conditional[f] for f in faces_of_call]),
        )

    solver: SDEDPMSolver2M = solver_factory()
    xts = noised_latents(x0.float(), timesteps, solver, seeds)  # (N+1, F, C, h, w)
    # 1. Every inversion evaluation is independent: (step, face) pairs in calls of `size`.
    texts = (inversion[0].text, inversion[1].text)
    work = [(i, f) for i in range(len(pairs)) for f in range(faces)]
    eps = torch.empty_like(xts[:-1])
    for start in range(0, len(work), unet.size):
        chunk = work[start : start + unet.size]
        out = unet(
            torch.stack([xts[i, f] for i, f in chunk]),
            [pairs[i][0] for i, _ in chunk],
            texts,
            rows(0, [f for _, f in chunk]),
        )
        for (i, f), value in zip(chunk, out):
            eps[i, f] = value
    # 2. The noise maps: the solver walks all faces' steps together with those outputs.
    noise_maps = torch.empty_like(xts[:-1])
    x = xts[0].clone()
    solver.reset()
    for i, (s, t) in enumerate(pairs):
        mu, scale = solver.mean(x, eps[i], s, t)
        noise_maps[i] = (xts[i + 1] - mu) / scale
        x = mu + scale * noise_maps[i]
    start_latents = xts[0]
    del xts, eps, x  # only the start latents and the noise maps are needed from here on
    # 3. Sampling: each call takes the faces with the most steps left; each face keeps its own solver.
    texts = (sampling[0].text, sampling[1].text)
    solvers = [solver_factory() for _ in range(faces)]
    latents = [start_latents[f].clone() for f in range(faces)]
    done = [0] * faces
    steps = len(pairs)
    while True:
        ready = sorted((f for f in range(faces) if done[f] < steps), key=lambda f: (done[f], f))[: unet.size]
        if not ready:
            break
        out = unet(
            torch.stack([latents[f] for f in ready]),
            [pairs[done[f]][0] for f in ready],
            texts,
            rows(1, ready),
        )
        for f, value in zip(ready, out):
            s, t = pairs[done[f]]
            latents[f] = solvers[f].step(latents[f][None], value[None], s, t, noise_maps[done[f], f][None])[0]
            done[f] += 1
    return torch.stack(latents)
