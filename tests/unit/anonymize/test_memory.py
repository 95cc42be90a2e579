"""``method.face_batch_size: auto``: the memory model traced on the meta device (shapes only) gives the
same activation peak as the same UNet call traced on real tensors, grows linearly with the faces, and
picks the largest batch that fits. (On a GPU the GPU benchmark checks it against the allocator.)"""

from __future__ import annotations

import pytest

from raypipe.anonymize.memory import CPU_BATCH, fitting_batch, peak_model, unet_peak_bytes
from raypipe.anonymize.pipeline import ReversePersonalization
from raypipe.config import ConfigError, MethodConfig


@pytest.mark.parametrize("faces", [1, 2, 4])
def test_the_meta_trace_is_the_real_trace(tiny_models, faces: int) -> None:
    meta = unet_peak_bytes(tiny_models, faces, 128)
    assert meta == unet_peak_bytes(tiny_models, faces, 128, device="cpu")  # 0.9 MB per face measured


def test_the_peak_is_linear_in_the_faces_and_grows_with_the_pixels(tiny_models) -> None:
    first, each = peak_model(tiny_models, 128)
    assert each > 0 and unet_peak_bytes(tiny_models, 4, 128) == first + 3 * each
    assert unet_peak_bytes(tiny_models, 1, 256) > 3 * unet_peak_bytes(tiny_models, 1, 128)


def test_the_largest_fitting_batch_is_chosen() -> None:
    # 10 GB free, 15 % kept back: 8.5 GB for 2 GB + 1 GB per further face: 7 faces.
    assert fitting_batch(10 * 10**9, 2 * 10**9, 1 * 10**9) == 7
    assert fitting_batch(10**12, 10**9, 10**9) == 16  # capped: more faces per call only add latency
    assert fitting_batch(10**9, 2 * 10**9, 10**9) == 1  # not even one face: try, and fail loudly


def test_auto_on_a_cpu_is_the_cpu_batch(tiny_models) -> None:
    rp = ReversePersonalization(tiny_models, None, MethodConfig(face_size=128, face_batch_size="auto"))
    assert rp.face_batch_size == CPU_BATCH and rp.describe()["face_batch_size"] == CPU_BATCH
    assert rp.describe()["method"]["face_batch_size"] == "auto"  # the configuration, as given
    with pytest.raises(ConfigError, match="face_batch_size"):
        MethodConfig(face_batch_size="most")


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_views_and_in_place_results_add_no_memory(device: str) -> None:
    import torch

    from raypipe.anonymize.memory import PeakBytes

    with torch.inference_mode(), PeakBytes() as peak:
        x = torch.ones(1000, device=device)  # 4,000 bytes
        y = x.view(10, 100).t().unsqueeze(0)  # views: the same storage
        x.add_(1)  # in place
        del x, y
        z = torch.ones(500, device=device)  # after the first storage is freed
    assert (peak.peak, peak.live) == (4000, 2000)
    del z
