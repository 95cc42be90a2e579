"""The job's stages as plain callables over lists of :class:`SampleTask` (Ray-free logic).

decode (CPU tasks) -> detect (CPU actors, or inside the GPU actors) -> anonymize (GPU actors) -> compose
(CPU actors). Each follows the stage contract (:mod:`raypipe.pipeline.stage`): it declares its
resources and batch size, loads its models in ``setup``, and is called with a batch of tasks.
Per-sample problems become the sample's status and error; infrastructure errors (a model that does
not load, a GPU that runs out of memory) raise, so Ray can retry the task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from raypipe.config import AuditConfig, LimitsConfig, MethodConfig, ModelsConfig, UtilityConfig
from raypipe.images import (
    SCANNED_FORMATS,
    ImageDecodeError,
    ImageTooLargeError,
    UnscannableImageError,
    decode_image,
    decode_picture,
    encodable_format,
    encode_image,
    identify_image,
    image_format_for,
    inspect_image,
    stored_orientation,
    upright_box,
)
from raypipe.io.spans import SpanReader
from raypipe.io.storage import StorageOptions
from raypipe.logs import get_logger
from raypipe.pipeline.stage import Resources, Stage
from raypipe.pipeline.task import ImageWork, SampleTask
from raypipe.records import Status

if TYPE_CHECKING:
    import numpy as np

    from raypipe.anonymize.analyzers import FaceAnalyzer
    from raypipe.anonymize.faces import Box

log = get_logger(__name__)


@contextmanager
def timed(tasks: list[SampleTask], step: str) -> Iterator[None]:
    """Charge a step's wall time to each task in equal parts (batched work has no per-sample time)."""
    started = time.perf_counter()
    yield
    share = (time.perf_counter() - started) / max(len(tasks), 1)
    for task in tasks:
        task.timings[step] = round(task.timings.get(step, 0.0) + share, 6)


TASK_CPUS = 0.25  # a light task's share of a core: the pools must never take every CPU (TESTING.md)
BATCH_SIZE = 8  # pipeline.batch_size's default
# What each stage holds by default; the job sizes the pools from its configuration (run.job_stages).
DECODE_RESOURCES = Resources(TASK_CPUS)
DETECT_RESOURCES = Resources(0.5, actors=(1, 1))
ANONYMIZE_RESOURCES = Resources(1.0, actors=(1, 1))
COMPOSE_RESOURCES = Resources(0.5, actors=(1, 1))  # the gate's dlib runs on one core


class Decode(Stage):
    """Image members -> upright RGB arrays. A member that cannot be decoded or scanned fails its sample.

    A member is an image if its extension says so or if its bytes are a picture (whatever its name).
    The sample's pixel budget is checked from the images' headers before any of them is decoded.
    Stateless: it runs as Ray tasks.
    """

    name = "Decode"

    def __init__(
        self, limits: LimitsConfig, resources: Resources = DECODE_RESOURCES, batch_size: int = BATCH_SIZE
    ) -> None:
        super().__init__(resources, batch_size)
        self.limits = limits

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        with timed(tasks, "decode"):
            for task in tasks:
                if task.pending:
                    self._decode(task)
        return tasks

    def _decode(self, task: SampleTask) -> None:
        found = _image_members(task)
        if found is None or not self._within_pixel_budget(task, found):
            return
        for index, named_format in found:
            name, data = task.members[index]
            try:
                decoded = decode_image(data, max_pixels=self.limits.max_image_pixels)
            except ImageDecodeError as exc:
                _fail_image(task, name, exc)
                return
            task.images.append(
                ImageWork(
                    member=index,
                    format=named_format or encodable_format(decoded.format),
                    rgb=decoded.rgb,
                    orientation=decoded.orientation,
                    pictures=list(decoded.pictures),
                    release=decoded.release,
                )
            )

    def _within_pixel_budget(self, task: SampleTask, found: list[tuple[int, str | None]]) -> bool:
        budget, total = self.limits.max_sample_pixels, 0
        for index, _ in found:
            name, data = task.members[index]
            try:
                total += inspect_image(data, max_pixels=self.limits.max_image_pixels).pixels
            except ImageDecodeError as exc:
                _fail_image(task, name, exc)
                return False
            if total > budget:
                task.fail(
                    "decode",
                    f"{name}: the sample's images hold {total} pixels up to this one, over the limit of"
                    f" {budget} (limits.max_sample_pixels)",
                )
                return False
        return True


def _image_members(task: SampleTask) -> list[tuple[int, str | None]] | None:
    """(member index, format its name gives) of every image member; None when the sample was failed
    because a member holds a picture in a format raypipe does not scan."""
    found = []
    for index, (name, data) in enumerate(task.members):
        named = image_format_for(name)
        content = identify_image(data)
        if content is not None and content not in SCANNED_FORMATS:
            task.fail(
                "scan",
                f"{name}: holds a picture in the {content} format (found by its content), which raypipe does not scan",
            )
            return None
        if named is not None or content is not None:
            found.append((index, named))
    return found


def _fail_image(task: SampleTask, name: str, exc: ImageDecodeError) -> None:
    if isinstance(exc, ImageTooLargeError):
        task.fail("decode", f"{name}: {exc} (limits.max_image_pixels)")
    elif isinstance(exc, UnscannableImageError):
        task.fail("scan", f"{name}: {exc}")
    else:
        task.fail("decode", f"{name}: {exc}")


def detect_faces(tasks: list[SampleTask], analyzer: FaceAnalyzer, method: MethodConfig, limits: LimitsConfig) -> None:
    """Find, align and embed every face; faces are numbered across a sample's images.

    Every picture whose pixels could be released is scanned too: the stored orientation of a rotated
    image (what readers that ignore EXIF show) and, for an image released as it is, its other pictures.
    A face in any of them that raypipe would not anonymize quarantines the sample.
    """
    with timed(tasks, "detect"):
        for task in tasks:
            if task.pending:
                _detect_sample(task, analyzer, method, limits)
            task.slim()  # from here on: faces and names; pixels and member bytes are read again at compose


def _detect_sample(task: SampleTask, analyzer: FaceAnalyzer, method: MethodConfig, limits: LimitsConfig) -> None:
    from raypipe.anonymize.pipeline import prepare_faces

    task.provenance["detector"] = analyzer.name
    weights = getattr(analyzer, "weights_hash", None)  # set by _hash_weights where the stage loads it
    if weights:
        task.provenance["detector_weights"] = weights
    next_index = 0
    for work in task.images:
        assert work.rgb is not None
        name = task.members[work.member][0]
        detections = analyzer.analyze(work.rgb)
        if len(detections) > limits.max_faces_per_image:
            task.fail(
                "detect",
                f"{name}: {len(detections)} faces, over the limit"
                f" (limits.max_faces_per_image={limits.max_faces_per_image})",
                Status.QUARANTINED,
            )
            return
        if _unseen_faces(task, work, [d.box for d in detections], analyzer, limits):
            return
        work.faces = prepare_faces(
            work.rgb, detections, method.face_size, method.seed, task.key, next_index, crops=not method.classic
        )
        next_index += len(work.faces)
    _read_attribute_prompt(task, method)


def _read_attribute_prompt(task: SampleTask, method: MethodConfig) -> None:
    """This sample's prompt from its metadata (method.attribute_from), if it has faces to anonymize: a
    prompt that cannot be read fails the sample, so no face is made with a prompt it did not ask for."""
    from raypipe.attributes import PromptError

    source = method.attribute_source
    if source is None or not any(face.ready for work in task.images for face in work.faces):
        return
    try:
        task.attribute_prompt = source.prompt(task.members, method.attribute_prompt, task.attribute_column)
    except PromptError as exc:
        task.fail("detect", str(exc))


def _unseen_faces(
    task: SampleTask, work: ImageWork, boxes: list[Box], analyzer: FaceAnalyzer, limits: LimitsConfig
) -> bool:
    """Scan the member's other pictures; fail (or quarantine) the sample and say True if one holds a face
    raypipe would release un-anonymized, or cannot be scanned."""
    assert work.rgb is not None
    name, data = task.members[work.member]
    if work.orientation != 1:
        hidden = _faces_only_as_stored(work.rgb, work.orientation, boxes, analyzer)
        if hidden:
            task.fail(
                "detect",
                f"{name}: {hidden} face(s) found only when the EXIF orientation ({work.orientation}) is"
                " ignored, as readers that ignore it show the image; they would not be anonymized",
                Status.QUARANTINED,
            )
            return True
    if boxes:
        # The image will be re-encoded from its main picture alone (or quarantined): its other pictures
        # are never released, and a thumbnail of the same face must not quarantine it.
        return False
    for picture in work.pictures:
        try:
            views = decode_picture(data, picture, max_pixels=limits.max_image_pixels)
        except ImageDecodeError as exc:
            task.fail("scan", f"{name}: {picture.label} cannot be decoded, so it cannot be scanned: {exc}")
            return True
        found = max(len(analyzer.analyze(view)) for view in views)
        if found:
            task.fail(
                "detect",
                f"{name}: {found} face(s) in {picture.label}, which raypipe cannot anonymize",
                Status.QUARANTINED,
            )
            return True
    return False


def _faces_only_as_stored(rgb: np.ndarray, orientation: int, boxes: list[Box], analyzer: FaceAnalyzer) -> int:
    """How many faces the detector finds in the stored orientation that it did not find upright."""
    from raypipe.anonymize.analyzers import MATCH_IOU, iou

    stored = stored_orientation(rgb, orientation)
    size = (stored.shape[1], stored.shape[0])
    hidden = 0
    for face in analyzer.analyze(stored):
        box = upright_box(face.box, orientation, size)
        if not any(iou(box, seen) >= MATCH_IOU or _centre_inside(box, seen) for seen in boxes):
            hidden += 1
    return hidden


def _centre_inside(box: Box, other: Box) -> bool:
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return other[0] <= x <= other[2] and other[1] <= y <= other[3]


class Detect(Stage):
    """CPU actors: each loads the face analyzer once, then detects faces batch after batch."""

    name = "Detect"

    def __init__(
        self,
        models: ModelsConfig,
        method: MethodConfig,
        limits: LimitsConfig,
        resources: Resources = DETECT_RESOURCES,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__(resources, batch_size)
        self.models, self.method, self.limits = models, method, limits
        self.analyzer: FaceAnalyzer | None = None

    def setup(self) -> None:
        from raypipe.anonymize.pipeline import load_analyzer_from_config

        self.analyzer = load_analyzer_from_config(self.models)
        _hash_weights(self.analyzer)
        super().setup()

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        assert self.analyzer is not None, "Detect.setup() loads the analyzer"
        detect_faces(tasks, self.analyzer, self.method, self.limits)
        return tasks


class Anonymize(Stage):
    """GPU actors: each loads the models once; anonymizes the faces of many samples in shared UNet
    batches, and anonymizes again the faces whose result fails the gate's screen (``audit.retries``)."""

    name = "Anonymize"

    def __init__(
        self,
        models: ModelsConfig,
        method: MethodConfig,
        limits: LimitsConfig,
        detect: bool,
        audit: AuditConfig | None = None,
        resources: Resources = ANONYMIZE_RESOURCES,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__(resources, batch_size)
        self.models, self.method, self.limits, self.audit = models, method, limits, audit or AuditConfig()
        self.detect = detect
        self.batches = 0
        self.provenance: dict[str, Any] = {}

    def setup(self) -> None:
        from raypipe.anonymize.pipeline import Gate, ReversePersonalization

        self.rp = ReversePersonalization.from_pretrained(
            self.models, self.method, load_analyzer=self.detect, audit=self.audit
        )
        # Retries are decided here, where the GPU is, with the gate the compose stage runs (its analyzer
        # named as the job's, so its not-a-face rule is the same).
        self.rp.gate = Gate(self.audit, self.models.analyzer)
        if self.detect:
            _hash_weights(self.rp.analyzer)
        optimizations = self.rp.models.optimizations
        self.provenance = {
            "node": _ray_node(),
            "device": _device_name(self.rp.models.device),
            # Speed-ups that change round-off are part of how a face was made: the audit says which ran.
            "models": dict(self.rp.models.sources)
            | ({"optimizations": ",".join(optimizations)} if optimizations else {}),
            "weight_hashes": dict(self.rp.models.weight_hashes),
        }
        super().setup()

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        from raypipe.pipeline import faults

        self.batches += 1
        if self.detect:
            assert self.rp.analyzer is not None
            detect_faces(tasks, self.rp.analyzer, self.method, self.limits)
        faults.on_anonymize_batch(self.batches)  # test hook; inert unless a RAYPIPE_FAULT_ variable is set
        with timed(tasks, "anonymize"):
            pending = [t for t in tasks if t.pending]
            ready = [f for t in pending for w in t.images for f in w.faces if f.ready]
            prompts = [t.attribute_prompt for t in pending for w in t.images for f in w.faces if f.ready]
            results = {id(face): crop for face, crop in zip(ready, self.rp.anonymize_faces(ready, prompts))}
            for task in tasks:
                for image in task.images:
                    image.outputs = [results.get(id(face)) for face in image.faces]
                    for face in image.faces:
                        face.drop_inputs()
        for task in tasks:
            task.provenance.update(self.provenance)
        return tasks


def _hash_weights(model: Any) -> str | None:
    """Hash a face analyzer's or recognizer's model files once (its ``weights_hash``), for the audit."""
    from raypipe.anonymize.models import files_hash

    files = getattr(model, "model_files", None)
    if files and not getattr(model, "weights_hash", None):
        model.weights_hash = files_hash(files)
    return getattr(model, "weights_hash", None)


def _ray_node() -> str:
    """The Ray node this worker runs on, for the audit; empty outside Ray."""
    import sys

    ray = sys.modules.get("ray")  # never imported here: a stage outside Ray has no node
    if ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())


def _device_name(device: Any) -> str:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(device)}"
    return str(device)


class Compose(Stage):
    """Paste faces back, verify them with the anonymizer's gate (:class:`raypipe.anonymize.pipeline.Gate`,
    the same code the API and ``anonymize-image`` run), re-encode only the images that changed, and
    settle each sample's status.

    A face that still re-identifies (or cannot be checked), or a face found in a released image where
    nothing was anonymized, quarantines the sample: it is never released.
    """

    name = "Compose"

    def __init__(
        self,
        audit: AuditConfig | None = None,
        analyzer: str = "insightface",
        utility: UtilityConfig | None = None,
        limits: LimitsConfig | None = None,
        storage: StorageOptions | None = None,
        resources: Resources = COMPOSE_RESOURCES,
        batch_size: int = BATCH_SIZE,
        jpeg_quality: int | str = "match",
        method: MethodConfig | None = None,
    ) -> None:
        super().__init__(resources, batch_size)
        self.audit, self.analyzer, self.utility = audit, analyzer, utility
        self.limits, self.storage = limits or LimitsConfig(), storage or StorageOptions()
        self.jpeg_quality = jpeg_quality  # encode.jpeg_quality
        self.method = method or MethodConfig()  # a classic method hides the faces here: no Anonymize stage

    def setup(self) -> None:
        from raypipe.anonymize.pipeline import gate_for

        # dlib's recognizer: independent of ArcFace
        self.gate = gate_for(self.audit, self.method, self.analyzer, utility=self.utility)
        self.recognizer_weights = _hash_weights(self.gate.reid.recognizer)
        super().setup()

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        with timed(tasks, "compose"), ExitStack() as inputs:
            readers: dict[str, SpanReader] = {}

            def reader(uri: str) -> SpanReader:  # one open input per shard in the batch
                if uri not in readers:
                    readers[uri] = inputs.enter_context(SpanReader(uri, self.storage))
                return readers[uri]

            for task in tasks:
                if task.pending:
                    self._compose(task, reader)
                task.images = []  # pixels, crops and embeddings go no further than this stage
                task.slim()  # nor member bytes that finalize can read from the input
        return tasks

    def _compose(self, task: SampleTask, reader: Callable[[str], SpanReader]) -> None:
        from raypipe.anonymize.pipeline import compose, hide_faces

        task.provenance["recognizer"] = self.gate.recognizer_name
        if self.recognizer_weights:
            task.provenance["recognizer_weights"] = self.recognizer_weights
        task.load_members([work.member for work in task.images], reader(task.source_uri))
        out_members = [task.unchanged(index) for index in range(len(task.members))]
        for work in task.images:
            name, data = task.members[work.member]
            if work.rgb is None:  # dropped after detection: the same bytes (checked) decode the same
                decoded = decode_image(data, max_pixels=self.limits.max_image_pixels)
                work.rgb, work.release = decoded.rgb, decoded.release
            if self.method.classic:
                done = hide_faces(work.rgb, work.faces, self.method.name)
            else:
                done = compose(work.rgb, work.faces, work.outputs)
            result = self.gate(work.rgb, done)
            task.faces.extend(result.faces)
            task.missed_faces += result.missed_faces
            if result.status is Status.QUARANTINED:
                task.fail(result.step or "verify", f"{name}: {result.error}", Status.QUARANTINED)
                return
            if result.status is Status.ANONYMIZED:
                assert result.image is not None
                encoded = encode_image(result.image, work.format, source=data, jpeg_quality=self.jpeg_quality)
                out_members[work.member] = (name, encoded)
            elif work.release is not None:  # a format whose other bytes cannot be vouched for
                out_members[work.member] = (name, work.release)
        task.status = Status.ANONYMIZED if task.faces else Status.NO_FACE
        task.out_members = out_members
