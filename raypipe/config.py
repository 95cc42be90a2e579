"""Configuration: frozen dataclasses validated at construction.

Every error names the field, what is allowed, and the value that was given, so a bad YAML file
is rejected before any model loads or Ray starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the allowed values."""


def _check(ok: bool, key: str, allowed: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {allowed}, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


PRESETS = ("tiny", "sdxl")
ANALYZERS = ("insightface", "dlib")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class MethodConfig:
    """The knobs of Reverse Personalization (METHOD.md section 9)."""

    guidance_scale: float = -10.0
    skip: float = 0.7
    num_steps: int = 100
    id_scale: float = 1.0
    ip_adapter_scale: float = 1.0
    face_size: int = 1024
    attribute_prompt: str | None = None
    seed: int = 0
    face_batch_size: int = 4

    def __post_init__(self) -> None:
        p = "method."
        _check(_is_number(self.guidance_scale), p + "guidance_scale", "a number (e.g. -10)", self.guidance_scale)
        _check(_is_number(self.skip) and 0.0 <= self.skip < 1.0, p + "skip", "a number in [0, 1)", self.skip)
        _check(
            isinstance(self.num_steps, int) and not isinstance(self.num_steps, bool) and self.num_steps >= 1,
            p + "num_steps",
            "an integer >= 1",
            self.num_steps,
        )
        _check(_is_number(self.id_scale) and self.id_scale >= 0, p + "id_scale", "a number >= 0", self.id_scale)
        _check(
            _is_number(self.ip_adapter_scale) and self.ip_adapter_scale >= 0,
            p + "ip_adapter_scale",
            "a number >= 0",
            self.ip_adapter_scale,
        )
        _check(
            isinstance(self.face_size, int) and self.face_size >= 64 and self.face_size % 64 == 0,
            p + "face_size",
            "a multiple of 64, at least 64 (SDXL works best at 1024)",
            self.face_size,
        )
        _check(
            self.attribute_prompt is None or isinstance(self.attribute_prompt, str),
            p + "attribute_prompt",
            "a string or null",
            self.attribute_prompt,
        )
        _check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            p + "seed",
            "an integer >= 0",
            self.seed,
        )
        _check(
            isinstance(self.face_batch_size, int) and self.face_batch_size >= 1,
            p + "face_batch_size",
            "an integer >= 1 (faces per UNet batch)",
            self.face_batch_size,
        )


@dataclass(frozen=True)
class ModelsConfig:
    """Where the weights come from: hub ids, local folders or object-store URIs (s3://, gs://, ...)."""

    preset: str = "sdxl"
    sdxl: str = "stabilityai/stable-diffusion-xl-base-1.0"
    ip_adapter: str = "h94/IP-Adapter-FaceID"
    ip_adapter_weight_name: str = "ip-adapter-faceid_sdxl.bin"
    vae: str | None = None  # e.g. "madebyollin/sdxl-vae-fp16-fix"; None keeps the SDXL VAE (run in fp32)
    analyzer: str = "insightface"
    insightface: str = "buffalo_l"
    det_thresh: float = 0.1
    det_size: int = 640
    dtype: str = "bfloat16"
    device: str = "auto"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        p = "models."
        _check(self.preset in PRESETS, p + "preset", f"one of {list(PRESETS)}", self.preset)
        _check(self.analyzer in ANALYZERS, p + "analyzer", f"one of {list(ANALYZERS)}", self.analyzer)
        _check(self.dtype in DTYPES, p + "dtype", f"one of {list(DTYPES)}", self.dtype)
        _check(
            _is_number(self.det_thresh) and 0.0 < self.det_thresh < 1.0,
            p + "det_thresh",
            "a number in (0, 1)",
            self.det_thresh,
        )
        _check(
            isinstance(self.det_size, int) and self.det_size >= 32 and self.det_size % 32 == 0,
            p + "det_size",
            "a multiple of 32, at least 32",
            self.det_size,
        )
        for name in ("sdxl", "ip_adapter", "ip_adapter_weight_name", "insightface", "device"):
            value = getattr(self, name)
            _check(isinstance(value, str) and bool(value), p + name, "a non-empty string", value)


def from_mapping(cls: type, data: Any, section: str) -> Any:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; allowed keys are {sorted(known)}")
    return cls(**data)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(obj)


__all__ = [
    "ANALYZERS",
    "DTYPES",
    "PRESETS",
    "ConfigError",
    "MethodConfig",
    "ModelsConfig",
    "from_mapping",
    "to_dict",
]
