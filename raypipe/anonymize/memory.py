"""How many faces fit in one UNet call: a memory model made on the meta device.

``method.face_batch_size: auto`` asks it. The UNet's activations for one guided call of B faces (both
branches: 2B samples) are traced with meta tensors, which have shapes and dtypes but no storage, so
nothing is computed and any model size can be traced on any machine: a dispatch mode adds up the bytes
of the tensors alive at each moment and keeps the peak. The weights are already on the device; the
largest B whose peak, with a safety margin, fits in the device's free memory is the batch. The VAE
runs one face at a time (``inversion.encode_crops``), apart from the UNet calls, so it does not limit B.

On a GPU the model is checked against ``torch.cuda.max_memory_allocated`` by the GPU benchmark; the CPU
tests check it against the same trace run on real tensors.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from raypipe.logs import get_logger

if TYPE_CHECKING:
    from raypipe.anonymize.models import Models

log = get_logger(__name__)

MAX_AUTO_BATCH = 16  # beyond this a UNet call saturates any current GPU: more faces only add latency
MARGIN = 0.15  # of the free memory, kept for the allocator's fragmentation and the solver's tensors
CPU_BATCH = 4  # what "auto" means without a GPU (memory is not what limits a CPU)


class PeakBytes:
    """A dispatch mode that records the peak of the bytes held by the storages of the tensors operators
    return, as an allocator would see them: a storage counts once, from its first tensor until the last
    tensor on it (views included) is garbage-collected."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                tracker._track(out)
                return out

        self.mode = _Mode()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()  # tensors already counted (by id, while alive)
        self._holders: dict[int, int] = {}  # storage -> tensors alive on it (views share their base's)

    def _track(self, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        for value in tree_flatten(out)[0]:
            if not isinstance(value, torch.Tensor) or id(value) in self._seen:
                continue
            storage = value.untyped_storage()
            key, size = storage._cdata, storage.nbytes()
            self._seen.add(id(value))
            if self._holders.get(key, 0) == 0:  # new memory; a view or an in-place result adds none
                self.live += size
                self.peak = max(self.peak, self.live)
            self._holders[key] = self._holders.get(key, 0) + 1
            weakref.finalize(value, self._release, id(value), key, size)

    def _release(self, tensor: int, key: int, size: int) -> None:
        self._seen.discard(tensor)
        self._holders[key] -= 1
        if self._holders[key] == 0:
            del self._holders[key]
            self.live -= size

    def __enter__(self) -> PeakBytes:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def unet_inputs(models: Models, faces: int, face_size: int, device: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of one guided UNet call for ``faces`` faces (2 x faces samples), as zeros."""
    import torch

    config = models.unet.config
    n, latent, dtype = 2 * faces, face_size // models.vae_scale_factor, models.dtype
    pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    projection = models.unet.encoder_hid_proj.image_projection_layers[0]
    identity_dim = int(projection.ff.net[0].proj.in_features)
    kwargs = {
        "encoder_hidden_states": torch.zeros(n, 77, config.cross_attention_dim, dtype=dtype, device=device),
        "added_cond_kwargs": {
            "text_embeds": torch.zeros(n, pooled_dim, dtype=dtype, device=device),
            "time_ids": torch.zeros(n, 6, dtype=dtype, device=device),
            "image_embeds": [torch.zeros(n, 1, identity_dim, dtype=dtype, device=device)],
        },
        "return_dict": False,
    }
    args = (
        torch.zeros(n, config.in_channels, latent, latent, dtype=dtype, device=device),
        torch.zeros(n, dtype=torch.int64, device=device),
    )
    return args, kwargs


def _stand_ins(module: Any, device: str) -> dict[str, Any]:
    """Uninitialised tensors of the shapes and dtypes of ``module``'s weights and buffers, on ``device``."""
    import torch

    return {
        name: torch.empty_like(t, device=device) for name, t in [*module.named_parameters(), *module.named_buffers()]
    }


def unet_peak_bytes(models: Models, faces: int, face_size: int, device: str = "meta") -> int:
    """Peak bytes of the activations of one guided UNet call for ``faces`` faces at ``face_size``,
    traced on ``device`` ("meta": shapes only, the weights stand in as meta tensors of their shapes)."""
    import torch
    from torch.func import functional_call

    unet = models.unet
    state = _stand_ins(unet, device)
    args, kwargs = unet_inputs(models, faces, face_size, device)
    with torch.inference_mode(), PeakBytes() as peak:
        functional_call(unet, state, args, kwargs)
    return peak.peak


def vae_peak_bytes(models: Models, face_size: int, device: str = "meta") -> int:
    """Peak bytes of decoding one face (the VAE's decoder, its larger half; the VAE runs face by face,
    apart from the UNet calls), traced like :func:`unet_peak_bytes`."""
    import torch
    from torch.func import functional_call

    vae = models.vae
    state = _stand_ins(vae, device)
    latent = torch.zeros(
        1,
        vae.config.latent_channels,
        face_size // models.vae_scale_factor,
        face_size // models.vae_scale_factor,
        device=device,
    )
    decoder = {name[len("decoder.") :]: t for name, t in state.items() if name.startswith("decoder.")}
    with torch.inference_mode(), PeakBytes() as peak:
        functional_call(vae.decoder, decoder, (latent,))
    return peak.peak


def peak_model(models: Models, face_size: int) -> tuple[int, int]:
    """(bytes for the first face, bytes for each further face) of a UNet call's activation peak: two
    meta traces, 1 and 2 faces (every activation has the batch as its leading dimension, so the peak
    is linear in the batch; the tests check it at 1, 2 and 4)."""
    one, two = unet_peak_bytes(models, 1, face_size), unet_peak_bytes(models, 2, face_size)
    return one, two - one


def fitting_batch(free_bytes: int, first: int, each: int, limit: int = MAX_AUTO_BATCH, margin: float = MARGIN) -> int:
    """The largest batch in [1, limit] whose peak ``first + (batch - 1) * each`` fits in ``free_bytes``
    less the margin; 1 when even one face does not fit (the call then fails loudly, not silently)."""
    budget = free_bytes * (1.0 - margin)
    fits = [batch for batch in range(1, limit + 1) if first + (batch - 1) * each <= budget]
    return max(fits, default=1)


def queue_bytes_per_face(models: Models, face_size: int, num_steps: int) -> int:
    """What the work queue holds per face besides the UNet's activations: the noised latents, the
    inversion's outputs and the noise maps, float32, one latent per step each (``queue.py``)."""
    latent = face_size // models.vae_scale_factor
    channels = int(models.unet.config.in_channels)
    return 3 * (num_steps + 1) * channels * latent * latent * 4


def auto_face_batch_size(models: Models, face_size: int, num_steps: int = 100) -> int:
    """``method.face_batch_size: auto``: the largest batch that fits the device's free memory (on a
    GPU, with the models loaded); :data:`CPU_BATCH` elsewhere. Each face of a call also brings the
    queue's latents for :data:`~raypipe.anonymize.pipeline.QUEUE_GROUP` faces."""
    import torch

    from raypipe.anonymize.pipeline import QUEUE_GROUP

    if models.device.type != "cuda":
        return CPU_BATCH
    free, total = torch.cuda.mem_get_info(models.device)
    first, each = peak_model(models, face_size)
    queued = QUEUE_GROUP * queue_bytes_per_face(models, face_size, num_steps)
    batch = fitting_batch(free, first + queued, each + queued)
    log.info(
        "face_batch_size auto: %d faces per UNet call (%.1f of %.1f GiB free; model: %.2f GiB + %.2f GiB per face)",
        batch,
        free / 2**30,
        total / 2**30,
        first / 2**30,
        each / 2**30,
    )
    return batch
