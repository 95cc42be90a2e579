"""Reverse Personalization on whole images: detect every face, anonymize it, paste it back.

The work is split in three steps that the Ray job runs as separate stages and that
:meth:`ReversePersonalization.anonymize_batch` runs in one process:

1. :func:`prepare_faces` (CPU): detections -> aligned crops, identity embeddings, per-face seeds.
2. :meth:`ReversePersonalization.anonymize_crops` (GPU): invert and sample, many faces per UNet batch.
3. :func:`compose` (CPU): paste the anonymized crops back, decide the sample's status.

Fail closed: a face that could not be embedded or anonymized makes the whole image ``quarantined``
and the result carries no image, so it can never be released by mistake.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raypipe.anonymize.faces import Box, DetectedFace, Paste, align_face, face_seed, paste_faces, retry_seed
from raypipe.config import TINY_FACE_SIZE, AuditConfig, MethodConfig, ModelsConfig, UtilityConfig
from raypipe.logs import get_logger
from raypipe.records import FaceRecord, FaceStatus, Status

if TYPE_CHECKING:
    from raypipe.anonymize.analyzers import FaceAnalyzer
    from raypipe.anonymize.models import Models

log = get_logger(__name__)


@dataclass
class PreparedFace:
    """One face on its way to the GPU. Crop and embedding live in memory only, never in outputs."""

    index: int
    box: tuple[float, float, float, float]
    score: float
    seed: int
    matrix: np.ndarray  # 2x3 image -> crop
    crop: np.ndarray | None  # face_size x face_size x 3 uint8; None when the face is not anonymizable
    embedding: np.ndarray | None
    error: str | None = None
    attempts: int = 0  # diffusion attempts made (set by ReversePersonalization.anonymize_faces)
    guidance_scale: float | None = None  # the guidance scale of the last attempt

    @property
    def ready(self) -> bool:
        """Anonymizable: aligned and embedded (its crop and embedding are dropped once anonymized)."""
        return self.error is None

    def drop_inputs(self) -> None:
        """Forget the crop and the embedding: what goes on from the GPU is the anonymized crop alone."""
        self.crop = self.embedding = None


@dataclass
class AnonymizationResult:
    """The outcome for one image. ``image`` is None unless the status is releasable."""

    status: Status
    image: np.ndarray | None
    faces: list[FaceRecord] = field(default_factory=list)
    error: str | None = None
    step: str | None = None  # where a quarantine was decided: "anonymize" or "verify"
    missed_faces: int = 0  # faces found again in the released image where none was anonymized


def prepare_faces(
    image: np.ndarray,
    detections: Sequence[DetectedFace],
    face_size: int,
    seed: int,
    key: str,
    first_index: int = 0,
    crops: bool = True,
) -> list[PreparedFace]:
    """Align every detected face to a ``face_size`` crop and attach its embedding and seed.

    Faces are numbered from ``first_index`` (a sample with several images numbers its faces across
    them), and each is seeded from (run seed, sample key, face index). ``crops=False`` (a classic
    method, which works on the box alone): no crop, no embedding, no seed, every face ready.
    """
    if not crops:
        return [
            PreparedFace(
                index=index,
                box=tuple(float(v) for v in det.box),  # type: ignore[arg-type]
                score=float(det.score),
                seed=0,
                matrix=np.eye(2, 3),
                crop=None,
                embedding=None,
            )
            for index, det in enumerate(detections, start=first_index)
        ]
    faces = []
    for index, det in enumerate(detections, start=first_index):
        seed_i = face_seed(seed, key, index)
        crop, matrix = align_face(image, det.landmarks, face_size)
        error = None
        if det.embedding is None:
            error = det.embedding_error or "no identity embedding could be computed for this face"
        elif not np.all(np.isfinite(det.embedding)):
            error = "identity embedding is not finite"
        faces.append(
            PreparedFace(
                index=index,
                box=tuple(float(v) for v in det.box),  # type: ignore[arg-type]
                score=float(det.score),
                seed=seed_i,
                matrix=matrix,
                crop=crop if error is None else None,
                embedding=det.embedding if error is None else None,
                error=error,
            )
        )
    return faces


def compose(
    image: np.ndarray, faces: Sequence[PreparedFace], outputs: Sequence[np.ndarray | None]
) -> AnonymizationResult:
    """Paste anonymized crops back and decide the status; any face left undone quarantines the image."""
    if len(faces) != len(outputs):
        raise ValueError(f"{len(faces)} faces but {len(outputs)} anonymized crops")
    if not faces:
        return AnonymizationResult(status=Status.NO_FACE, image=image)
    records = []
    for face, out in zip(faces, outputs):
        if not face.ready:
            status, error = FaceStatus.NOT_EMBEDDABLE, face.error
        elif out is None:
            status, error = FaceStatus.ANONYMIZE_ERROR, "the anonymized face was not finite"
        else:
            status, error = FaceStatus.ANONYMIZED, None
        records.append(
            FaceRecord(
                index=face.index,
                box=face.box,
                score=face.score,
                status=status,
                seed=face.seed,
                error=error,
                attempts=face.attempts or None,
                guidance_scale=face.guidance_scale,
            )
        )
    undone = [r for r in records if r.status is not FaceStatus.ANONYMIZED]
    if undone:
        reasons = "; ".join(f"face {r.index}: {r.status.value} ({r.error})" for r in undone)
        return AnonymizationResult(
            status=Status.QUARANTINED, image=None, faces=records, error=reasons, step="anonymize"
        )
    pastes = [Paste(crop=out, matrix=face.matrix, box=face.box) for face, out in zip(faces, outputs) if out is not None]
    return AnonymizationResult(status=Status.ANONYMIZED, image=paste_faces(image, pastes), faces=records)


def hide_faces(image: np.ndarray, faces: Sequence[PreparedFace], method: str) -> AnonymizationResult:
    """A classic method in place of the diffusion: every detected face hidden by ``method`` (blur,
    pixelate or mask, see :mod:`raypipe.anonymize.classic`). The gate then judges the result exactly as
    it judges Reverse Personalization's."""
    if not faces:
        return AnonymizationResult(status=Status.NO_FACE, image=image)
    records = [FaceRecord(index=f.index, box=f.box, score=f.score, status=FaceStatus.ANONYMIZED) for f in faces]
    return AnonymizationResult(Status.ANONYMIZED, _hide(image, [f.box for f in faces], method), records)


def gate_for(
    audit: AuditConfig | None, method: MethodConfig, analyzer: str | None, utility: UtilityConfig | None = None
) -> Gate:
    """The gate of a job or an anonymizer. With the ``mask`` method a face that fails (or is too small to
    check) falls back to the mask it already has: no pixel of it is left, so it is released as obscured."""
    from dataclasses import replace

    audit = audit or AuditConfig()
    if method.name == "mask":
        audit = replace(audit, fallback="mask")
    return Gate(audit, analyzer, utility=utility)


class Gate:
    """Verification, the last step of every path that releases an image (the API, ``anonymize-image``
    and the job's compose stage run this same code).

    Each face is compared with its original by the independent recognizer (``audit.recognizer``); then
    the released image is searched again for faces that nothing anonymized. A face that still
    re-identifies, cannot be checked, or was missed quarantines the image: it is never released.

    Before that verdict, two things can save an image (see :mod:`raypipe.audit.reid`):

    - a doubtful detection (a weak analyzer score, and the recognizer's own detector sees no face there
      in the original) that fails is masked (``obscured``) instead of withholding the image;
    - a face that fails can be hidden by a classic method (``audit.fallback``), checked again, and
      released as ``obscured``.

    :meth:`screen` is the cheap check on one anonymized crop that the anonymizer runs to decide its
    retries (``audit.retries``), where the GPU is.
    """

    def __init__(
        self,
        audit: AuditConfig | None = None,
        analyzer: str | None = None,
        recognizer: Any = None,
        utility: UtilityConfig | None = None,
    ) -> None:
        from raypipe.audit.reid import ReidGate, non_face_score

        audit = audit or AuditConfig()
        self.utility = utility or UtilityConfig()
        self.reid = ReidGate(recognizer, threshold=audit.reid_threshold)
        self.check_missed = audit.check_missed_faces
        self.fallback = audit.fallback
        self.min_face_px = audit.min_face_px
        self.non_face_score = non_face_score(analyzer, audit.non_face_score)
        # With the same (deterministic) detector on both sides, searching an unchanged image again can
        # only repeat the first answer: re-detect only images that were changed.
        # ``analyzer`` is the job's ``models.analyzer`` name, whose dlib analyzer is built with the same
        # settings as the gate's; anything else (an analyzer's own name, None) is searched again.
        self.recheck_unchanged = analyzer != audit.recognizer

    @property
    def recognizer_name(self) -> str:
        return self.reid.name

    def worth_retrying(self, face: PreparedFace) -> bool:
        """Whether a failing face deserves another diffusion attempt: not a weak detection, which may
        not be a face at all (the image-level verdict decides, and masks it if it stays doubtful;
        retrying it would only spend the GPU)."""
        return self.non_face_score is None or face.score >= self.non_face_score

    def screen(self, face: PreparedFace, output: np.ndarray | None) -> bool:
        """Whether the anonymized crop ``output`` of ``face`` passes the recognizer, compared with the
        original crop at the face's box (landmarks fitted to that box: no detection). The image-level
        verdict (:meth:`__call__`) stays the one that decides what is released."""
        if output is None or face.crop is None:
            return False
        box = crop_box(face)
        return self.reid.check_face(face.crop, output, box, ([], [])).passed

    def __call__(self, original: np.ndarray, result: AnonymizationResult) -> AnonymizationResult:
        """``result`` with each face's verdict; quarantined (no image) when a face fails."""
        from raypipe.audit.reid import missed_faces

        if result.status is Status.QUARANTINED:
            return result
        released = result.image if result.image is not None else original
        boxes = [f.box for f in result.faces]
        search = self.check_missed and (result.status is Status.ANONYMIZED or self.recheck_unchanged)
        # At most two full-image detections per image, whatever the number of faces: one of the original
        # (to frame each face, and to confirm it is a face) and one of the released image (framing and
        # missed faces).
        try:
            before = self.reid.detect(original) if boxes else []
            after = self.reid.detect(released) if boxes or search else []
        except Exception as failure:  # the recognizer failing is a verdict (nothing verified), never a release
            return _unverified(result, f"{type(failure).__name__}: {failure}")
        faces = [self._verdict(original, released, face, (before, after)) for face in result.faces]
        doubtful = [face.box for face in faces if face.status is FaceStatus.OBSCURED]
        if doubtful:  # weak, unconfirmed regions that did not pass: masked, so nothing of them is released
            released = _hide(released, doubtful, "mask")
        failing = [i for i, face in enumerate(faces) if not face.status.released]
        if failing and self.fallback != "none":
            released, faces = self._fall_back(original, released, faces, failing, before)
        refused = [f for f in faces if not f.status.released]
        if refused:
            reasons = "; ".join(f"face {f.index}: {f.error}" for f in refused)
            return AnonymizationResult(Status.QUARANTINED, None, faces, reasons, step="verify")
        missed = 0
        if search:
            missed = missed_faces(released, boxes, found=after)
            if missed:
                why = f"{missed} face(s) found in the output that were not anonymized"
                return AnonymizationResult(Status.QUARANTINED, None, faces, why, step="verify", missed_faces=missed)
        image = released if result.image is not None else result.image
        if image is not None and self.utility.measure:
            faces = [self._measured(original, image, face) for face in faces]
        return AnonymizationResult(result.status, image, faces, result.error, result.step, missed)

    def _measured(self, original: np.ndarray, released: np.ndarray, face: FaceRecord) -> FaceRecord:
        """``face`` with its utility deltas (anonymized faces only) and the thresholds it crossed."""
        from dataclasses import replace

        from raypipe.audit.utility import measure

        landmarker: Any = self.reid.recognizer  # dlib's: its 68-point model (a stub recognizer has none)
        if face.status is not FaceStatus.ANONYMIZED or not hasattr(landmarker, "landmarks68"):
            return face
        utility = measure(landmarker, original, released, face.box)
        return replace(
            face,
            yaw_change=utility.yaw_change,
            pitch_change=utility.pitch_change,
            roll_change=utility.roll_change,
            landmark_drift=utility.landmark_drift,
            eye_change=utility.eye_change,
            mouth_change=utility.mouth_change,
            utility_flags=utility_flags(utility, self.utility),
        )

    def _verdict(
        self,
        original: np.ndarray,
        released: np.ndarray,
        face: FaceRecord,
        detections: tuple[list[Box], list[Box]],
    ) -> FaceRecord:
        """One face's verdict. In order: a face too small to check is ``unchecked``; any other is compared
        with its original. A region that fails, or is too small, and that neither detector is sure of (a
        weak analyzer score, and the gate's own detector sees no face there) is masked instead of
        withholding the image: a patch of clothing cannot be told from its anonymized version, but no
        identity leaks from a black box (``obscured``, with the reason)."""
        from dataclasses import replace

        from raypipe.audit.reid import UNCHECKED

        seen = _gate_box(face.box, detections[0])
        weak = self.non_face_score is not None and face.score < self.non_face_score
        doubtful = weak and seen is None
        side = _shorter_side(seen or face.box)
        if side < self.min_face_px:
            why = (
                f"{UNCHECKED}: the face is {side:.0f} px, below audit.min_face_px ({self.min_face_px}); the"
                " recognizer cannot vouch for faces this small"
            )
            return (
                replace(face, status=FaceStatus.OBSCURED, error=self._doubt(face, why))
                if doubtful
                else (replace(face, status=FaceStatus.UNCHECKED, error=why))
            )
        check = self.reid.check_face(original, released, face.box, detections)
        verdict = replace(face, distance=check.distance, threshold=check.threshold)
        if check.passed:
            return verdict
        why = _attempted(_scored(check), face.attempts)
        if doubtful:
            return replace(verdict, status=FaceStatus.OBSCURED, error=self._doubt(face, why))
        return replace(verdict, status=check.face_status or face.status, error=why)

    def _doubt(self, face: FaceRecord, why: str) -> str:
        return (
            f"{why}; a doubtful detection (score {face.score:.2f} below audit.non_face_score"
            f" {self.non_face_score}, and {self.reid.name} finds no face there in the original): masked"
        )

    def _fall_back(
        self,
        original: np.ndarray,
        released: np.ndarray,
        faces: list[FaceRecord],
        failing: list[int],
        before: list[Box],
    ) -> tuple[np.ndarray, list[FaceRecord]]:
        """Hide the failing faces with ``audit.fallback`` and check each of them again."""
        from dataclasses import replace

        hidden = _hide(released, [faces[i].box for i in failing], self.fallback)
        faces = list(faces)
        for i in failing:
            face = faces[i]
            if _shorter_side(_gate_box(face.box, before) or face.box) < self.min_face_px:
                # Too small to check: only a mask, which leaves no pixel of the face, releases it.
                if self.fallback == "mask":
                    faces[i] = replace(face, status=FaceStatus.OBSCURED, error=f"{face.error}; masked (audit.fallback)")
                else:
                    why = f"{face.error}; {self.fallback} cannot be verified on a face this small (use mask)"
                    faces[i] = replace(face, error=why)
                continue
            # The landmarks are fitted to the face's own box: the detector may no longer find anything there.
            check = self.reid.check_face(original, hidden, face.box, (before, []))
            if check.passed:
                why = f"{face.error}; hidden by {self.fallback} (audit.fallback), then {_scored(check)}"
                faces[i] = replace(face, status=FaceStatus.OBSCURED, distance=check.distance, error=why)
            else:
                why = f"{face.error}; {_scored(check)} even after {self.fallback} (audit.fallback)"
                faces[i] = replace(face, status=check.face_status or face.status, distance=check.distance, error=why)
        return hidden, faces


def _hide(image: np.ndarray, boxes: list[Box], method: str) -> np.ndarray:
    """``image`` with ``boxes`` hidden by a classic ``method``; a box with no pixel in the image has
    nothing to hide."""
    from raypipe.anonymize.classic import obscure, region

    def inside(box: Box) -> bool:
        try:
            region(image.shape, box)
        except ValueError:
            return False
        return True

    return obscure(image, [box for box in boxes if inside(box)], method)


def _gate_box(box: Box, detections: Sequence[Box]) -> Box | None:
    """The gate detector's box for the face at ``box`` (the best-overlapping detection), if it saw one."""
    from raypipe.anonymize.analyzers import best_match

    match = best_match(list(detections), box)
    return detections[match] if match is not None else None


def _scored(check: Any) -> str:
    """The check's reason with its distance: ``still re-identifies (distance 0.412 < 0.6)``."""
    if check.distance is None:
        return str(check.reason)
    relation = ">=" if check.distance >= check.threshold else "<"
    return f"{check.reason} (distance {check.distance:.3f} {relation} {check.threshold:g})"


def _unverified(result: AnonymizationResult, cause: str) -> AnonymizationResult:
    from dataclasses import replace

    from raypipe.audit.reid import UNCHECKED

    error = f"{UNCHECKED}: the recognizer's detection failed ({cause})"
    faces = [replace(face, status=FaceStatus.UNCHECKED, error=error) for face in result.faces]
    return AnonymizationResult(Status.QUARANTINED, None, faces, error, step="verify")


def utility_flags(utility: Any, limits: UtilityConfig) -> tuple[str, ...]:
    """The ``utility:`` thresholds that ``utility`` (a :class:`raypipe.audit.utility.Utility`) crosses."""
    checks = [
        ("pose", utility.pose_change, limits.max_pose_change_deg, "utility.max_pose_change_deg"),
        ("landmarks", utility.landmark_drift, limits.max_landmark_drift, "utility.max_landmark_drift"),
        ("eyes", utility.eye_change, limits.max_eye_change, "utility.max_eye_change"),
        ("mouth", utility.mouth_change, limits.max_mouth_change, "utility.max_mouth_change"),
    ]
    return tuple(
        f"{what} changed {abs(value):.3g}, over {key} ({limit:g})"
        for what, value, limit, key in checks
        if limit is not None and value is not None and abs(value) > limit
    )


def _shorter_side(box: Box) -> float:
    return min(box[2] - box[0], box[3] - box[1])


def _attempted(reason: str, attempts: int | None) -> str:
    return f"{reason} after {attempts} attempts" if attempts and attempts > 1 else reason


def crop_box(face: PreparedFace) -> Box:
    """The face's detection box in its aligned crop's pixels (the box's corners through ``matrix``)."""
    x1, y1, x2, y2 = face.box
    corners = np.array([[x1, y1, 1.0], [x2, y1, 1.0], [x1, y2, 1.0], [x2, y2, 1.0]])
    mapped = corners @ np.asarray(face.matrix, dtype=np.float64).T
    low, high = mapped.min(axis=0), mapped.max(axis=0)
    return (float(low[0]), float(low[1]), float(high[0]), float(high[1]))


QUEUE_GROUP = 4  # faces per work-queue run, in face batches: bounds the latents held at once


def load_analyzer_from_config(models: ModelsConfig) -> FaceAnalyzer:
    """The face analyzer named by the config (insightface weights may come from an object store)."""
    from raypipe.anonymize.analyzers import build_analyzer
    from raypipe.anonymize.models import resolve_source

    if models.analyzer == "insightface":
        return build_analyzer(
            "insightface",
            model=resolve_source(models.insightface, models.cache_dir),
            det_thresh=models.det_thresh,
            det_size=models.det_size,
        )
    return build_analyzer(models.analyzer)


class ClassicAnonymizer:
    """``blur``, ``pixelate`` or ``mask`` behind the same detection and the same gate as
    :class:`ReversePersonalization`: no diffusion, no GPU, no models but the face analyzer and the gate's
    recognizer. Nothing of a face's pose or expression is kept.

    >>> classic = ClassicAnonymizer(build_analyzer("dlib"), MethodConfig(name="blur"))
    >>> result = classic.anonymize(image, key="000123")
    """

    def __init__(self, analyzer: FaceAnalyzer, method: MethodConfig, audit: AuditConfig | None = None) -> None:
        if not method.classic:
            raise ValueError(f"method.name {method.name!r} is not a classic method")
        self.analyzer, self.method = analyzer, method
        self.gate = gate_for(audit, method, analyzer.name)

    def anonymize(self, image: np.ndarray, key: str = "") -> AnonymizationResult:
        faces = prepare_faces(image, self.analyzer.analyze(image), self.method.face_size, 0, key, crops=False)
        return self.gate(image, hide_faces(image, faces, self.method.name))

    def describe(self) -> dict[str, Any]:
        """What a record says about the method: its name, and no diffusion models."""
        return {
            "method": {"name": self.method.name},
            "models": {},
            "weight_hashes": {},
            "optimizations": [],
            "analyzer": self.analyzer.name,
        }


class ReversePersonalization:
    """The anonymizer: models loaded once, any number of images or face batches.

    >>> rp = ReversePersonalization.tiny()            # random weights, CPU, seconds
    >>> result = rp.anonymize(image, key="000123")    # image: HxWx3 uint8 RGB
    >>> result.status, result.image, result.faces
    """

    def __init__(
        self,
        models: Models,
        analyzer: FaceAnalyzer | None,
        method: MethodConfig | None = None,
        audit: AuditConfig | None = None,
    ) -> None:
        from raypipe.anonymize.guidance import TextEncoder
        from raypipe.anonymize.memory import auto_face_batch_size
        from raypipe.anonymize.schedule import NoiseSchedule, make_timesteps

        self.models = models
        self.analyzer = analyzer
        self.method = method or MethodConfig()
        # Faces per UNet call: as configured, or "auto": the most that fit, found once per process.
        configured = self.method.face_batch_size
        self.face_batch_size = (
            auto_face_batch_size(models, self.method.face_size, self.method.num_steps)
            if configured == "auto"
            else int(configured)
        )
        self.audit = audit or AuditConfig()
        self._gate: Gate | None = None  # built on first use: the job verifies in its compose stage instead
        if analyzer is not None and analyzer.embedding_dim != models.id_embed_dim:
            raise ValueError(
                f"the {analyzer.name} analyzer gives {analyzer.embedding_dim}-d identity embeddings but the "
                f"IP-Adapter-FaceID projection expects {models.id_embed_dim}-d (ArcFace); use the "
                "'insightface' analyzer with the 'sdxl' preset"
            )
        self.timesteps = make_timesteps(self.method.skip, self.method.num_steps)
        self.schedule = NoiseSchedule.sdxl()
        self.text = TextEncoder(models)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pretrained(
        cls,
        models: ModelsConfig | None = None,
        method: MethodConfig | None = None,
        analyzer: FaceAnalyzer | None = None,
        load_analyzer: bool = True,
        audit: AuditConfig | None = None,
    ) -> ReversePersonalization:
        """Models named by :class:`ModelsConfig`: production weights from hub ids, local folders or
        object-store URIs (``preset: sdxl``), or tiny random ones (``preset: tiny``).

        ``load_analyzer=False`` skips the face analyzer (when detection runs in another process).
        """
        from raypipe.anonymize.analyzers import EMBEDDING_DIMS
        from raypipe.anonymize.models import build_tiny_models, load_models, optimize_for_inference

        models = models or ModelsConfig()
        method = method or MethodConfig()
        if analyzer is None and load_analyzer:
            analyzer = load_analyzer_from_config(models)
        if models.preset == "tiny":
            id_dim = analyzer.embedding_dim if analyzer is not None else EMBEDDING_DIMS[models.analyzer]
            loaded = build_tiny_models(
                id_embed_dim=id_dim, ip_adapter_scale=method.ip_adapter_scale, device=models.device
            )
        else:
            loaded = load_models(models, ip_adapter_scale=method.ip_adapter_scale)
        compile = models.compile is True or (models.compile == "auto" and loaded.device.type == "cuda")
        optimize_for_inference(loaded, channels_last=models.channels_last, fuse_lora=models.fuse_lora, compile=compile)
        return cls(loaded, analyzer, method, audit)

    @classmethod
    def tiny(
        cls,
        method: MethodConfig | None = None,
        analyzer: FaceAnalyzer | str | None = "dlib",
        seed: int = 0,
        audit: AuditConfig | None = None,
    ) -> ReversePersonalization:
        """Tiny random models (offline, CPU, seconds): every code path of production, no real weights.

        With the dlib analyzer the FaceID projection takes dlib's 128-d embeddings.
        """
        from raypipe.anonymize.analyzers import build_analyzer
        from raypipe.anonymize.models import build_tiny_models

        if isinstance(analyzer, str):
            analyzer = build_analyzer(analyzer)
        method = method or MethodConfig(face_size=TINY_FACE_SIZE)
        id_dim = analyzer.embedding_dim if analyzer is not None else 512
        models = build_tiny_models(id_embed_dim=id_dim, seed=seed, ip_adapter_scale=method.ip_adapter_scale)
        return cls(models, analyzer, method, audit)

    # ------------------------------------------------------------------ the method on crops

    def anonymize_crops(
        self,
        crops: Sequence[np.ndarray],
        embeddings: Sequence[np.ndarray],
        seeds: Sequence[int],
        guidance_scale: float | None = None,
        prompt: str | None = None,
    ) -> list[np.ndarray | None]:
        """Anonymize aligned face crops in UNet calls of exactly ``method.face_batch_size`` faces.

        The faces share calls through a work queue (:mod:`raypipe.anonymize.queue`): inversion steps of
        all faces are batched freely, sampling steps of different faces share calls, so only the last
        calls of a group can run short (padded). Faces go through in groups of
        :data:`QUEUE_GROUP` x ``face_batch_size``, which bounds the latents held at once.

        ``guidance_scale``: None for ``method.guidance_scale`` (retries step it, see
        :meth:`anonymize_faces`). ``prompt``: the attribute prompt of all these faces, ``""`` for none;
        None for ``method.attribute_prompt``. Returns one uint8 crop per face, or None where the result
        was not finite (fail closed).
        """
        if not (len(crops) == len(embeddings) == len(seeds)):
            raise ValueError(f"{len(crops)} crops, {len(embeddings)} embeddings, {len(seeds)} seeds")
        guidance = self.method.guidance_scale if guidance_scale is None else float(guidance_scale)
        attribute = self.method.attribute_prompt if prompt is None else prompt
        out: list[np.ndarray | None] = []
        group = QUEUE_GROUP * self.face_batch_size
        for start in range(0, len(crops), group):
            stop = start + group
            out.extend(
                self._anonymize_group(
                    crops[start:stop], embeddings[start:stop], seeds[start:stop], guidance, attribute or None
                )
            )
        return out

    def anonymize_faces(
        self, faces: Sequence[PreparedFace], prompts: Sequence[str | None] | None = None
    ) -> list[np.ndarray | None]:
        """:meth:`anonymize_crops` over prepared faces (all must be ready), escalating before giving up.

        ``prompts``: each face's attribute prompt (``""``: none, None: ``method.attribute_prompt``);
        faces of one prompt share UNet calls, since a call has one text condition.

        A face whose crop fails the gate's :meth:`Gate.screen` is anonymized again, up to
        ``audit.retries`` times, each time with a new seed (:func:`~raypipe.anonymize.faces.retry_seed`)
        and the guidance scale moved by ``audit.retry_guidance_step``. Each face records its attempts
        and last guidance scale. Weak detections are not retried (:meth:`Gate.worth_retrying`).
        """
        crops, embeddings = [], []
        for face in faces:
            if face.crop is None or face.embedding is None:
                raise ValueError(f"face {face.index} is not ready to anonymize: {face.error}")
            crops.append(face.crop)
            embeddings.append(face.embedding)
        if not faces:
            return []
        if prompts is None:
            prompts = [None] * len(faces)
        if len(prompts) != len(faces):
            raise ValueError(f"{len(faces)} faces but {len(prompts)} prompts")
        attribute = [(self.method.attribute_prompt or "") if p is None else p for p in prompts]

        def run(indices: list[int], seeds: list[int], guidance: float | None) -> list[np.ndarray | None]:
            """The faces ``indices``, one call of :meth:`anonymize_crops` per distinct prompt."""
            results: dict[int, np.ndarray | None] = {}
            for prompt in dict.fromkeys(attribute[i] for i in indices):
                group = [n for n, i in enumerate(indices) if attribute[i] == prompt]
                made = self.anonymize_crops(
                    [crops[indices[n]] for n in group],
                    [embeddings[indices[n]] for n in group],
                    [seeds[n] for n in group],
                    guidance,
                    prompt=prompt,
                )
                results |= dict(zip(group, made))
            return [results[n] for n in range(len(indices))]

        first_seeds = [f.seed for f in faces]
        outputs = run(list(range(len(faces))), first_seeds, None)
        for face in faces:
            face.attempts, face.guidance_scale = 1, self.method.guidance_scale
        for attempt in range(1, self.audit.retries + 1):
            failing = [
                i
                for i, (face, out) in enumerate(zip(faces, outputs))
                if self.gate.worth_retrying(face) and not self.gate.screen(face, out)
            ]
            if not failing:
                break
            guidance = self.method.guidance_scale + attempt * self.audit.retry_guidance_step
            log.info("retrying %d face(s), attempt %d, guidance scale %.2f", len(failing), attempt + 1, guidance)
            again = run(failing, [retry_seed(first_seeds[i], attempt) for i in failing], guidance)
            for i, out in zip(failing, again):
                outputs[i] = out
                faces[i].attempts, faces[i].guidance_scale = attempt + 1, guidance
                faces[i].seed = retry_seed(first_seeds[i], attempt)  # the seed of the face that is kept
        return outputs

    def _anonymize_group(
        self,
        crops: Sequence[np.ndarray],
        embeddings: Sequence[np.ndarray],
        seeds: Sequence[int],
        guidance: float,
        attribute_prompt: str | None,
    ) -> list[np.ndarray | None]:
        import torch

        from raypipe.anonymize.guidance import inversion_branches, sampling_branches
        from raypipe.anonymize.inversion import decode_latents, encode_crops
        from raypipe.anonymize.queue import FixedBatchUNet, anonymize_latents
        from raypipe.anonymize.schedule import SDEDPMSolver2M

        started = time.perf_counter()
        self._check_crops(crops)
        method, models = self.method, self.models
        size = crops[0].shape[0]
        unet = FixedBatchUNet(models, guidance, (size, size, 0, 0, size, size), self.face_batch_size)

        # 1. Encode the crops (fp32 VAE, distribution mode, one face at a time).
        x0 = encode_crops(models.vae, torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2))
        # 2. Invert with the null identity in both branches, then replay the noise maps pushed away
        #    from each face's identity: every UNet call full, through the work queue.
        identity = torch.from_numpy(np.stack(embeddings).astype(np.float32))
        latents = anonymize_latents(
            x0,
            self.timesteps,
            unet,
            lambda: SDEDPMSolver2M(self.schedule),
            seeds,
            inversion_branches(self.text, len(crops), models.id_embed_dim),
            sampling_branches(self.text, identity, method.id_scale, attribute_prompt),
        )
        # 3. Decode; a non-finite face is reported as None, never clamped into a plausible image.
        pixels = decode_latents(models.vae, latents).permute(0, 2, 3, 1).cpu().numpy()
        log.debug("anonymized %d faces in %.2fs", len(crops), time.perf_counter() - started)
        return [np.clip(np.rint(p), 0, 255).astype(np.uint8) if np.all(np.isfinite(p)) else None for p in pixels]

    def _check_crops(self, crops: Sequence[np.ndarray]) -> None:
        if not crops:
            raise ValueError("no crops to anonymize")
        shape = crops[0].shape
        factor = self.models.vae_scale_factor * 2
        if len(shape) != 3 or shape[2] != 3 or shape[0] != shape[1] or shape[0] % factor:
            raise ValueError(f"crops must be square RGB with a side divisible by {factor}, got {shape}")
        if any(c.shape != shape or c.dtype != np.uint8 for c in crops):
            raise ValueError("all crops in a batch must be uint8 and of the same shape")

    # ------------------------------------------------------------------ whole images

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        if self.analyzer is None:
            raise ValueError("this ReversePersonalization has no face analyzer; pass one to detect faces")
        return self.analyzer.analyze(image)

    def anonymize(self, image: np.ndarray, key: str = "") -> AnonymizationResult:
        """Anonymize every face of one RGB uint8 image (HxWx3). ``key`` seeds the faces' noise."""
        return self.anonymize_batch([image], [key])[0]

    def anonymize_batch(self, images: Sequence[np.ndarray], keys: Sequence[str]) -> list[AnonymizationResult]:
        """Anonymize many images, with faces from all of them sharing UNet batches."""
        # 1. Check inputs.
        if len(images) != len(keys):
            raise ValueError(f"{len(images)} images but {len(keys)} keys")
        for key, image in zip(keys, images):
            if not (
                isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            ):
                got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
                raise ValueError(f"image {key!r}: expected an HxWx3 uint8 RGB array, got {got}")
        # 2. Detect and align every face.
        prepared = [
            prepare_faces(image, self.detect(image), self.method.face_size, self.method.seed, key)
            for image, key in zip(images, keys)
        ]
        # 3. Anonymize all ready faces together, in UNet batches.
        ready = [face for faces in prepared for face in faces if face.ready]
        crops = self.anonymize_faces(ready)
        by_face: dict[int, np.ndarray | None] = {id(f): c for f, c in zip(ready, crops)}
        # 4. Paste back, one status per image.
        results = [compose(image, faces, [by_face.get(id(f)) for f in faces]) for image, faces in zip(images, prepared)]
        # 5. Verify: the gate decides what may be released.
        return [self.gate(image, result) for image, result in zip(images, results)]

    @property
    def gate(self) -> Gate:
        """The re-identification gate that :meth:`anonymize` runs on every result (and whose screen
        decides :meth:`anonymize_faces`'s retries)."""
        if self._gate is None:
            # An analyzer object's settings are unknown here: its own name makes the gate always search again.
            self._gate = Gate(self.audit, self.analyzer.name if self.analyzer is not None else None)
        return self._gate

    @gate.setter
    def gate(self, gate: Gate) -> None:
        self._gate = gate

    def describe(self) -> dict[str, Any]:
        """Method parameters and model provenance, for records and audit (no secrets, no biometrics)."""
        from raypipe.config import to_dict

        return {
            "method": to_dict(self.method),
            "timesteps": [self.timesteps[0], self.timesteps[-1], len(self.timesteps)],
            "models": dict(self.models.sources),
            "weight_hashes": dict(self.models.weight_hashes),
            "optimizations": list(self.models.optimizations),
            "face_batch_size": self.face_batch_size,
            "analyzer": self.analyzer.name if self.analyzer is not None else None,
        }
