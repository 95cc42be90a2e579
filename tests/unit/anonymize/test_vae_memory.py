"""The VAE's peak memory is that of one face, whatever the batch: encode and decode run face by face.

Measured with a TorchDispatchMode that sees every tensor the VAE's operators produce, on the tiny
random VAE (the same AutoencoderKL class as SDXL's): the largest activation inside ``vae.encode`` and
``vae.decode`` is the same for a batch of 1 and of 4 faces. (Run batched, it was 4x.)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from raypipe.anonymize.inversion import decode_latents, encode_crops
from raypipe.anonymize.models import build_tiny_models


class LargestTensor(TorchDispatchMode):
    """The bytes of the largest tensor any operator returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel() * value.element_size())
        return out


@pytest.fixture(scope="module")
def vae() -> Any:
    return build_tiny_models(id_embed_dim=128).vae


def watched(vae: Any, monkeypatch: pytest.MonkeyPatch) -> LargestTensor:
    """Measure inside the VAE's own encode and decode only (not the caller's concatenation)."""
    mode = LargestTensor()
    for name in ("encode", "decode"):
        inner = getattr(vae, name)

        def measured(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            with mode:
                return _inner(*args, **kwargs)

        monkeypatch.setattr(vae, name, measured)
    return mode


@pytest.mark.parametrize("step", ["encode", "decode"])
def test_the_vae_peak_does_not_grow_with_the_batch(vae: Any, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    peaks = []
    for faces in (1, 4):
        crops = torch.randint(0, 256, (faces, 3, 128, 128), dtype=torch.uint8)
        with monkeypatch.context() as patch:
            mode = watched(vae, patch)
            if step == "encode":
                latents = encode_crops(vae, crops)
                assert latents.shape[0] == faces
            else:
                pixels = decode_latents(vae, torch.randn(faces, 4, 16, 16))
                assert pixels.shape == (faces, 3, 128, 128)
        peaks.append(mode.largest)
    assert peaks[0] > 0 and peaks[1] == peaks[0]


def test_face_by_face_gives_the_batched_result(vae: Any) -> None:
    crops = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    with torch.inference_mode():
        batched = vae.encode(crops.float() / 127.5 - 1.0).latent_dist.mode() * vae.config.scaling_factor
    assert torch.allclose(encode_crops(vae, crops), batched, atol=1e-5)
