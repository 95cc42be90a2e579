"""Conditioning and guidance (METHOD.md section 3).

A UNet call always evaluates both branches, unconditional first, as one batch of 2B for B faces:

| phase                 | unconditional ``eps_u``        | conditional ``eps_c``        |
|-----------------------|--------------------------------|------------------------------|
| inversion             | zero text, null id             | E(""), P(""), null id        |
| sampling              | zero text, null id             | E(""), P(""), identity e     |
| sampling, attribute A | E(A), P(A), null id            | E(""), P(""), identity e     |

and combines them as ``eps = eps_u + w (eps_c - eps_u)``; with the default w = -10 that is
``11 eps_u - 10 eps_c``: the sample is pushed away from the identity (and towards A).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from raypipe.anonymize.models import Models

Denoiser = Callable[["torch.Tensor", int], "torch.Tensor"]


def combine_guidance(eps_u: torch.Tensor, eps_c: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``eps_u + w (eps_c - eps_u)``; for every w, including w <= 1 (no branch is ever skipped)."""
    return eps_u + guidance_scale * (eps_c - eps_u)


@dataclass(frozen=True)
class TextEmbedding:
    tokens: torch.Tensor  # (1, L, D): both encoders' penultimate hidden states, concatenated
    pooled: torch.Tensor  # (1, P): the second encoder's projected pooled output


class TextEncoder:
    """Encodes prompts the SDXL way and caches them: each distinct prompt is encoded once while it is
    among the ``capacity`` most recently used (per-sample prompts can be many; an SDXL embedding is
    about 0.3 MB on the GPU)."""

    def __init__(self, models: Models, capacity: int = 256) -> None:
        self._models = models
        self._capacity = capacity
        self._cache: OrderedDict[str, TextEmbedding] = OrderedDict()
        self.encoded = 0  # prompts run through the text encoders (tests, logs)

    def __call__(self, prompt: str) -> TextEmbedding:
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        embedding = self._cache[prompt] = self._encode(prompt)
        self.encoded += 1
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return embedding

    def zeros(self) -> TextEmbedding:
        """The all-zero text condition ``0_txt`` (SDXL's ``force_zeros_for_empty_prompt``)."""
        empty = self("")
        return TextEmbedding(empty.tokens.new_zeros(empty.tokens.shape), empty.pooled.new_zeros(empty.pooled.shape))

    def _encode(self, prompt: str) -> TextEmbedding:
        import torch

        pipe, device = self._models.pipe, self._models.device
        hidden, pooled = [], None
        with torch.inference_mode():
            for tokenizer, encoder in (
                (pipe.tokenizer, pipe.text_encoder),
                (pipe.tokenizer_2, pipe.text_encoder_2),
            ):
                ids = tokenizer(
                    prompt,
                    padding="max_length",
                    max_length=tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(device)
                out = encoder(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                pooled = out[0]  # CLIPTextModelWithProjection: text_embeds (the last encoder wins)
        assert pooled is not None
        dtype = self._models.dtype
        return TextEmbedding(torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype))


@dataclass(frozen=True)
class Branch:
    """One guidance branch for a batch of B faces."""

    text: TextEmbedding
    identity: torch.Tensor  # (B, E): identity embeddings; zeros are the null identity


class GuidedUNet:
    """``denoise(x, t)`` for a batch of faces at one timestep: both branches in one UNet call, then
    guidance. The call itself is :class:`~raypipe.anonymize.queue.FixedBatchUNet`'s, with the batch's
    branches fixed (the step-by-step form of the loop, as ``invert`` and ``replay`` use it)."""

    def __init__(
        self,
        models: Models,
        unconditional: Branch,
        conditional: Branch,
        guidance_scale: float,
        time_ids: tuple[int, ...],
        timesteps: Sequence[int] = (),
    ) -> None:
        from raypipe.anonymize.queue import FixedBatchUNet

        self._batch = unconditional.identity.shape[0]
        self._call = FixedBatchUNet(models, guidance_scale, time_ids, self._batch)
        self._call.announce(timesteps)
        self._texts = (unconditional.text, conditional.text)
        self._identities = (
            unconditional.identity.to(device=models.device, dtype=models.dtype),
            conditional.identity.to(device=models.device, dtype=models.dtype),
        )

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self._call(x, [t] * self._batch, self._texts, self._identities)


def inversion_branches(text: TextEncoder, batch: int, id_dim: int) -> tuple[Branch, Branch]:
    null = _null_identity(batch, id_dim)
    return Branch(text.zeros(), null), Branch(text(""), null)


def sampling_branches(
    text: TextEncoder, identity: torch.Tensor, id_scale: float, attribute_prompt: str | None
) -> tuple[Branch, Branch]:
    """The attribute prompt sits in the *unconditional* branch on purpose: with w < 0 the sample is
    pulled towards it while being pushed away from the identity."""
    batch, id_dim = identity.shape
    unconditional_text = text(attribute_prompt) if attribute_prompt else text.zeros()
    return (
        Branch(unconditional_text, _null_identity(batch, id_dim)),
        Branch(text(""), identity * id_scale),
    )


def _null_identity(batch: int, id_dim: int) -> torch.Tensor:
    # The zero vector goes through the FaceID projection like any identity: that is IP-Adapter-FaceID's
    # own unconditional input (its projection turns it into 4 non-zero tokens).
    import torch

    return torch.zeros(batch, id_dim)
