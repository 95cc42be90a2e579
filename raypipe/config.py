"""Configuration: frozen dataclasses validated at construction.

Every error names the field, what is allowed, and the value that was given, so a bad YAML file
is rejected before any model loads or Ray starts.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import Any

from raypipe.attributes import AttributeSource
from raypipe.io.storage import StorageOptions


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


METHOD_NAMES = ("reverse_personalization", "blur", "pixelate", "mask")
CLASSIC_METHODS = METHOD_NAMES[1:]  # no diffusion: CPU only, nothing of pose or expression is kept


@dataclass(frozen=True)
class MethodConfig:
    """How faces are anonymized: ``name`` picks the method; the other knobs are Reverse Personalization's
    (METHOD.md section 9) and are ignored by the classic methods (``blur``, ``pixelate``, ``mask``)."""

    name: str = "reverse_personalization"
    guidance_scale: float = -10.0
    skip: float = 0.7
    num_steps: int = 100
    id_scale: float = 1.0
    ip_adapter_scale: float = 1.0
    face_size: int = 1024
    attribute_prompt: str | None = None
    # Each sample's prompt from its metadata, "MEMBER:FIELD" or a table's "column:NAME" (raypipe.attributes);
    # attribute_prompt is the default where a sample's metadata has none.
    attribute_from: str | None = None
    seed: int = 0
    face_batch_size: int | str = 4  # faces per UNet call; "auto": the most that fit the GPU's free memory

    @property
    def classic(self) -> bool:
        """A classic method (no diffusion, no models but the detector and the gate's recognizer)."""
        return self.name in CLASSIC_METHODS

    def __post_init__(self) -> None:
        p = "method."
        _check(
            isinstance(self.name, str) and self.name in METHOD_NAMES,
            p + "name",
            f"one of {list(METHOD_NAMES)}",
            self.name,
        )
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
        self._check_attribute_from()
        _check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            p + "seed",
            "an integer >= 0",
            self.seed,
        )
        _check(
            self.face_batch_size == "auto"
            or (
                isinstance(self.face_batch_size, int)
                and not isinstance(self.face_batch_size, bool)
                and self.face_batch_size >= 1
            ),
            p + "face_batch_size",
            '"auto" or an integer >= 1 (faces per UNet call)',
            self.face_batch_size,
        )

    def _check_attribute_from(self) -> None:
        key = "method.attribute_from"
        if self.attribute_from is None:
            return
        _check(
            isinstance(self.attribute_from, str), key, "a string MEMBER:FIELD, column:NAME or null", self.attribute_from
        )
        try:
            AttributeSource.parse(self.attribute_from)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if self.classic:
            raise ConfigError(
                f"{key}: the {self.name} method has no attribute prompt; drop attribute_from or use"
                " reverse_personalization"
            )

    @property
    def attribute_source(self) -> AttributeSource | None:
        """Where each sample's attribute prompt is read (``attribute_from``), or None: the job's for all."""
        return AttributeSource.parse(self.attribute_from) if self.attribute_from else None


@dataclass(frozen=True)
class ModelsConfig:
    """Where the weights come from: hub ids, local folders or object-store URIs (s3://, gs://, ...)."""

    preset: str = "sdxl"
    sdxl: str = "stabilityai/stable-diffusion-xl-base-1.0"
    ip_adapter: str = "h94/IP-Adapter-FaceID"
    ip_adapter_weight_name: str = "ip-adapter-faceid_sdxl.bin"
    vae: str | None = None  # a VAE (or a pipeline folder with vae/); None: the SDXL folder's vae/ (fp32)
    variant: str | None = None  # e.g. "fp16": load the *.fp16.safetensors files of the SDXL folder
    analyzer: str = "insightface"
    insightface: str = "buffalo_l"
    det_thresh: float = 0.1
    det_size: int = 640
    dtype: str = "bfloat16"
    device: str = "auto"
    cache_dir: str | None = None
    # Inference speed-ups that change only round-off, on by default (BENCHMARKS.md says what each costs
    # in numerics); the audit records which ran.
    channels_last: bool = True  # UNet and VAE in NHWC layout: faster convolutions on GPUs, same math
    fuse_lora: bool = True  # merge the FaceID LoRA into the UNet weights: fewer kernels, round-off changes
    compile: bool | str = "auto"  # torch.compile the UNet; "auto": on CUDA only; false: never (eager)

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
        for name in ("channels_last", "fuse_lora"):
            _check(isinstance(getattr(self, name), bool), p + name, "true or false", getattr(self, name))
        _check(
            isinstance(self.compile, bool) or self.compile == "auto",
            p + "compile",
            '"auto" (on CUDA), true or false',
            self.compile,
        )
        _check(
            self.variant is None or (isinstance(self.variant, str) and self.variant.isidentifier()),
            p + "variant",
            'a weight variant such as "fp16", or null',
            self.variant,
        )


DETECT_PLACEMENTS = ("cpu", "gpu_actor")


@dataclass(frozen=True)
class PipelineConfig:
    """How the Ray job is laid out (all Ray specifics stay in ``raypipe.pipeline``)."""

    address: str | None = None  # None: connect to a running cluster if there is one, else start a local one
    anonymize_actors_min: int = 1
    anonymize_actors_max: int = 1
    num_gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU run)
    num_cpus_per_actor: float = 0.5
    anonymize_actor_resources: dict[str, float] | None = None  # custom Ray resources, e.g. {"a100": 1}
    batch_size: int = 8  # samples per batch handed to an actor
    # Batches queued at each anonymize actor: 1 keeps batches from piling up on one actor while another
    # idles (benchmarks/gpu_feed.py: 4 actors at 2 s per face 0.81 busy with 1, 0.50 with Ray Data's 2).
    anonymize_tasks_in_flight: int = 1
    detect: str = "cpu"  # "cpu": a CPU stage before the GPU pool; "gpu_actor": inside the GPU actors
    detect_actors: int = 1
    compose_actors: int | str = "auto"  # "auto": from 1 up to what the cluster's CPUs allow (Ray Data scales it)
    progress: bool = True
    library_logs: bool = False  # the libraries' own INFO and WARNING lines (Ray Data, transformers); --verbose
    stall_timeout_s: float = 3600.0  # no commit for this long ends the job (raypipe.pipeline.watchdog)
    lease_ttl_s: float = 300.0  # OUTPUT's writer lease lasts this long unless renewed (raypipe.pipeline.lease)

    def __post_init__(self) -> None:
        p = "pipeline."
        _check(
            _is_number(self.lease_ttl_s) and self.lease_ttl_s >= 3,
            p + "lease_ttl_s",
            "a number of seconds >= 3",
            self.lease_ttl_s,
        )
        _check(
            self.address is None or isinstance(self.address, str),
            p + "address",
            "a string or null",
            self.address,
        )
        for name in (
            "anonymize_actors_min",
            "anonymize_actors_max",
            "anonymize_tasks_in_flight",
            "batch_size",
            "detect_actors",
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                p + name,
                "an integer >= 1",
                value,
            )
        _check(
            self.compose_actors == "auto"
            or (
                (isinstance(self.compose_actors, int) and not isinstance(self.compose_actors, bool))
                and self.compose_actors >= 1
            ),
            p + "compose_actors",
            '"auto" or an integer >= 1',
            self.compose_actors,
        )
        _check(
            self.anonymize_actors_max >= self.anonymize_actors_min,
            p + "anonymize_actors_max",
            f"at least anonymize_actors_min ({self.anonymize_actors_min})",
            self.anonymize_actors_max,
        )
        for name in ("num_gpus_per_actor", "num_cpus_per_actor"):
            value = getattr(self, name)
            if value is not None or name == "num_cpus_per_actor":
                _check(_is_number(value) and value >= 0, p + name, "a number >= 0", value)
        _check(self.detect in DETECT_PLACEMENTS, p + "detect", f"one of {list(DETECT_PLACEMENTS)}", self.detect)
        _check(isinstance(self.progress, bool), p + "progress", "true or false", self.progress)
        _check(isinstance(self.library_logs, bool), p + "library_logs", "true or false", self.library_logs)
        _check(
            _is_number(self.stall_timeout_s) and self.stall_timeout_s > 0,
            p + "stall_timeout_s",
            "a number of seconds > 0",
            self.stall_timeout_s,
        )
        resources = self.anonymize_actor_resources
        _check(
            resources is None
            or (
                isinstance(resources, dict)
                and all(isinstance(k, str) and _is_number(v) and v >= 0 for k, v in resources.items())
            ),
            p + "anonymize_actor_resources",
            "a mapping of resource name to amount, or null",
            resources,
        )


@dataclass(frozen=True)
class LimitsConfig:
    """Safety limits for untrusted shards (docs/FAULTS.md). A member or an image beyond them fails its
    sample; an image with more faces quarantines it; the reason names the limit."""

    max_member_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_faces_per_image: int = 64
    # Decoded pixels of all pictures of one sample (every image, MPO frame and embedded picture),
    # checked from their headers before any is decoded: bounds a sample's memory (3 bytes a pixel).
    max_sample_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        for name in ("max_member_bytes", "max_image_pixels", "max_faces_per_image", "max_sample_pixels"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                "limits." + name,
                "an integer >= 1",
                value,
            )


RECOGNIZERS = ("dlib",)
FALLBACKS = ("none", "blur", "pixelate", "mask")


@dataclass(frozen=True)
class AuditConfig:
    """Compliance checks and evidence (the signing key itself never goes in a config file)."""

    recognizer: str = "dlib"  # the independent recognizer of the re-identification gate
    reid_threshold: float = 0.6  # Euclidean distance below which a face still re-identifies (dlib's rule)
    check_missed_faces: bool = True  # re-detect faces in released images; a missed one quarantines
    # A detection whose analyzer score is below this and that the gate's own detector does not see in
    # the original is doubtful: if it fails the gate it is masked instead of withholding the image
    # (None: the analyzer's default, raypipe.audit.reid.NON_FACE_SCORES; 0: never).
    non_face_score: float | None = None
    # Faces smaller than this (the box's shorter side, in pixels) cannot be vouched for by the recognizer:
    # they are held back unless audit.fallback is "mask" (raypipe.audit.reid).
    min_face_px: int = 35
    retries: int = 2  # diffusion attempts after the first for a face that fails the gate
    retry_guidance_step: float = -2.5  # each retry moves the guidance scale this much (and takes a new seed)
    fallback: str = "none"  # then: "none" quarantines; "blur", "pixelate" or "mask" obscure that face
    quarantine_output: str | None = None  # where to keep quarantined originals (path/URI); None: nowhere
    key_file: str | None = None  # signing key file (else the RAYPIPE_AUDIT_KEY environment variable)
    # Where each run's signed checkpoint goes (folder path/URI kept apart from OUTPUT, e.g. a bucket
    # with object lock): `audit verify --anchor` then detects rollback and truncation of OUTPUT.
    anchor: str | None = None

    def __post_init__(self) -> None:
        p = "audit."
        _check(self.recognizer in RECOGNIZERS, p + "recognizer", f"one of {list(RECOGNIZERS)}", self.recognizer)
        _check(
            _is_number(self.reid_threshold) and 0.0 < self.reid_threshold <= 2.0,
            p + "reid_threshold",
            "a Euclidean distance in (0, 2] (dlib: 0.6)",
            self.reid_threshold,
        )
        _check(
            self.non_face_score is None or (_is_number(self.non_face_score) and self.non_face_score >= 0),
            p + "non_face_score",
            "a detector score >= 0 or null",
            self.non_face_score,
        )
        _check(
            isinstance(self.min_face_px, int) and not isinstance(self.min_face_px, bool) and self.min_face_px >= 0,
            p + "min_face_px",
            "an integer number of pixels >= 0",
            self.min_face_px,
        )
        _check(
            isinstance(self.retries, int) and not isinstance(self.retries, bool) and 0 <= self.retries <= 10,
            p + "retries",
            "an integer in [0, 10]",
            self.retries,
        )
        _check(
            _is_number(self.retry_guidance_step) and self.retry_guidance_step <= 0,
            p + "retry_guidance_step",
            "a number <= 0 (more negative guidance pushes further from the identity)",
            self.retry_guidance_step,
        )
        _check(self.fallback in FALLBACKS, p + "fallback", f"one of {list(FALLBACKS)}", self.fallback)
        _check(
            isinstance(self.check_missed_faces, bool),
            p + "check_missed_faces",
            "true or false",
            self.check_missed_faces,
        )
        for name in ("quarantine_output", "key_file", "anchor"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and bool(value)), p + name, "a path/URI or null", value)


@dataclass(frozen=True)
class UtilityConfig:
    """Per-face utility (raypipe.audit.utility): measured for every anonymized face; a threshold set here
    flags the faces beyond it in the audit (``utility_flags``), it never withholds them."""

    measure: bool = True  # measure head-pose, landmark, eye and mouth changes for every anonymized face
    max_pose_change_deg: float | None = None  # flag faces whose yaw, pitch or roll changed more than this
    max_landmark_drift: float | None = None  # flag faces whose landmarks moved more (over inter-ocular distance)
    max_eye_change: float | None = None  # flag faces whose eye aspect ratio changed more than this
    max_mouth_change: float | None = None  # flag faces whose mouth opening changed more than this

    def __post_init__(self) -> None:
        p = "utility."
        _check(isinstance(self.measure, bool), p + "measure", "true or false", self.measure)
        for name in ("max_pose_change_deg", "max_landmark_drift", "max_eye_change", "max_mouth_change"):
            value = getattr(self, name)
            _check(value is None or (_is_number(value) and value >= 0), p + name, "a number >= 0 or null", value)


@dataclass(frozen=True)
class EncodeConfig:
    """How anonymized images are written (images raypipe does not change are copied byte for byte)."""

    # "match": a JPEG keeps its input's own quantization tables and chroma subsampling, so it comes out
    # at the input's quality and about its size; a number 1-100: that quality, with the input's subsampling.
    jpeg_quality: int | str = "match"

    def __post_init__(self) -> None:
        value = self.jpeg_quality
        _check(
            value == "match" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100),
            "encode.jpeg_quality",
            '"match" (the input\'s own tables) or an integer 1-100',
            value,
        )


@dataclass(frozen=True)
class JobConfig:
    """A whole job: what to read, where to write, which models, which method settings, how to run."""

    input: tuple[str, ...] = ()
    output: str = ""
    input_format: str = "auto"  # auto | webdataset | parquet (raypipe.io.shards)
    storage: StorageOptions = field(default_factory=StorageOptions)
    models: ModelsConfig = ModelsConfig()
    method: MethodConfig = MethodConfig()
    pipeline: PipelineConfig = PipelineConfig()
    limits: LimitsConfig = LimitsConfig()
    audit: AuditConfig = AuditConfig()
    utility: UtilityConfig = UtilityConfig()
    encode: EncodeConfig = EncodeConfig()

    def __post_init__(self) -> None:
        from raypipe.io.shards import INPUT_FORMATS

        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(
                f"input_format: must be one of {', '.join(INPUT_FORMATS)}, got {self.input_format!r}"
                f"{did_you_mean([str(self.input_format)], set(INPUT_FORMATS))}"
            )
        if self.audit.quarantine_output:
            _check_quarantine_apart(self.audit.quarantine_output, self.input, self.output)
        gpus = self.pipeline.num_gpus_per_actor
        if self.method.face_batch_size == "auto" and gpus is not None and 0 < gpus < 1:
            raise ConfigError(
                f"method.face_batch_size: auto sizes the batch to a whole GPU's free memory, but "
                f"pipeline.num_gpus_per_actor is {gpus}: actors sharing a GPU would each take it all; "
                "give a number of faces instead"
            )

    def input_shards(self) -> list[str]:
        """The input shards ``input`` names, listed (see :func:`raypipe.io.shards.expand_shards`)."""
        from raypipe.io.shards import expand_shards

        return expand_shards(list(self.input), self.storage, self.input_format)


_PATTERN_CHARS = frozenset("*?[{")  # where the fixed part of a glob or brace pattern ends


def input_folder(spec: str) -> str:
    """The folder every shard of an input spec lies in (or below): the folder of the spec's fixed prefix,
    the text before its first glob or brace character (``s3://b/in`` for ``s3://b/in/part-{0..9}.tar``)."""
    cut = next((i for i, char in enumerate(spec) if char in _PATTERN_CHARS), len(spec))
    prefix = spec[:cut]
    if "://" in prefix:
        scheme, _, rest = prefix.partition("://")
        return f"{scheme}://{posixpath.dirname(rest)}"  # "s3://" when the bucket itself is a pattern
    return posixpath.dirname(prefix) or "."


def _check_quarantine_apart(quarantine: str, inputs: tuple[str, ...], output: str) -> None:
    """Quarantined originals hold real faces and keep their shard's name: under OUTPUT they would be
    released with the dataset; in an input folder they would overwrite the input shards, or be read as
    input by a later pattern. Compared by location (see ``raypipe.io.storage.location``)."""
    from raypipe.io.storage import is_within, redact

    places = [
        (f"INPUT {redact(spec)!r} (its folder {redact(input_folder(spec))!r})", input_folder(spec)) for spec in inputs
    ]
    if output:
        places.insert(0, (f"OUTPUT {redact(output)!r}", output))
    for what, place in places:
        if is_within(quarantine, place):
            raise ConfigError(
                f"audit.quarantine_output: must be a location outside INPUT and OUTPUT, got {redact(quarantine)!r}, "
                f"which is inside {what}; quarantined originals keep their shard names and hold real faces. "
                "Use a separate, access-restricted folder or bucket prefix"
            )


SECTIONS: dict[str, type] = {
    "storage": StorageOptions,
    "models": ModelsConfig,
    "method": MethodConfig,
    "pipeline": PipelineConfig,
    "limits": LimitsConfig,
    "audit": AuditConfig,
    "utility": UtilityConfig,
    "encode": EncodeConfig,
}
TINY_FACE_SIZE = 128  # the tiny preset's default crop: big enough for the 8x VAE and two UNet levels


def load_config(
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    require_io: bool = True,
) -> JobConfig:
    """Read a YAML job file (optional), apply command-line overrides, validate everything.

    ``overrides`` maps section names to {key: value}, plus ``input``/``output`` at the top level.
    """
    data: dict[str, Any] = {}
    if path is not None:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = dict(loaded or {})
    return build_config(data, overrides or {}, require_io=require_io)


def build_config(data: dict[str, Any], overrides: dict[str, Any], require_io: bool = True) -> JobConfig:
    allowed = {"input", "output", "input_format", *SECTIONS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown section(s) {unknown}{did_you_mean(unknown, allowed)}; allowed are {sorted(allowed)}"
        )
    merged: dict[str, Any] = {}
    for name in SECTIONS:
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: must be a mapping, got {type(section).__name__}")
        merged[name] = {**section, **(overrides.get(name) or {})}
    preset = merged["models"].get("preset", ModelsConfig.preset)
    if preset == "tiny":
        merged["method"].setdefault("face_size", TINY_FACE_SIZE)
    _check_storage(merged["storage"])
    sections = {name: from_mapping(cls, merged[name], name) for name, cls in SECTIONS.items()}
    inputs = overrides.get("input") or data.get("input") or ()
    if isinstance(inputs, str):
        inputs = (inputs,)
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, str) and i for i in inputs):
        raise ConfigError(f"input: must be a path/URI or a list of them, got {inputs!r}")
    output = overrides.get("output") or data.get("output") or ""
    if not isinstance(output, str):
        raise ConfigError(f"output: must be a path or URI, got {output!r}")
    _check_no_credentials(inputs, output)
    if require_io and not inputs:
        raise ConfigError("input: no input shards given (INPUT argument or 'input:' in the config)")
    if require_io and not output:
        raise ConfigError("output: no output location given (OUTPUT argument or 'output:' in the config)")
    input_format = overrides.get("input_format") or data.get("input_format") or "auto"
    return JobConfig(input=tuple(inputs), output=output, input_format=input_format, **sections)


def _check_no_credentials(inputs: Any, output: str) -> None:
    from raypipe.io.storage import check_no_credentials

    try:
        for uri in inputs:
            check_no_credentials(uri, "input")
        check_no_credentials(output, "output")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_storage(section: dict[str, Any]) -> None:
    for name in ("endpoint_url", "region", "profile"):
        value = section.get(name)
        _check(value is None or isinstance(value, str), "storage." + name, "a string or null", value)
    value = section.get("anonymous", False)
    _check(isinstance(value, bool), "storage.anonymous", "true or false", value)


def did_you_mean(unknown: list[Any], known: set[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the unknown names that are close to a known one; empty if none is."""
    import difflib

    guesses = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
        if close:
            guesses.append(f"{name!r}: did you mean {prefix + close[0]!r}?")
    return f" ({'; '.join(guesses)})" if guesses else ""


def from_mapping(cls: type, data: Any, section: str) -> Any:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        hint = did_you_mean(unknown, known, f"{section}.")
        raise ConfigError(f"{section}: unknown key(s) {unknown}{hint}; allowed keys are {sorted(known)}")
    try:
        return cls(**data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section}: {exc}") from exc


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(obj)


__all__ = [
    "ANALYZERS",
    "DTYPES",
    "PRESETS",
    "AuditConfig",
    "ConfigError",
    "JobConfig",
    "LimitsConfig",
    "MethodConfig",
    "ModelsConfig",
    "PipelineConfig",
    "build_config",
    "from_mapping",
    "load_config",
    "to_dict",
]
