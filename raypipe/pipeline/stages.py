"""The job's stages as plain callables over lists of :class:`SampleTask` (Ray-free logic).

decode (CPU) -> detect (CPU actor, or inside the GPU actor) -> anonymize (GPU actor) -> compose (CPU).
Per-sample problems become the sample's status and error; infrastructure errors (a model that does
not load, a GPU that runs out of memory) raise, so Ray can retry the task.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from raypipe.config import AuditConfig, LimitsConfig, MethodConfig, ModelsConfig
from raypipe.images import ImageDecodeError, ImageTooLargeError, decode_image, encode_image, image_format_for
from raypipe.logs import get_logger
from raypipe.pipeline.task import ImageWork, SampleTask
from raypipe.records import FaceRecord, FaceStatus, Status

if TYPE_CHECKING:
    import numpy as np

    from raypipe.anonymize.analyzers import FaceAnalyzer

log = get_logger(__name__)


@contextmanager
def timed(tasks: list[SampleTask], step: str) -> Iterator[None]:
    """Charge a step's wall time to each task in equal parts (batched work has no per-sample time)."""
    started = time.perf_counter()
    yield
    share = (time.perf_counter() - started) / max(len(tasks), 1)
    for task in tasks:
        task.timings[step] = round(task.timings.get(step, 0.0) + share, 6)


class Decode:
    """Image members -> upright RGB arrays. A member that cannot be decoded fails its sample."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        with timed(tasks, "decode"):
            for task in tasks:
                if task.pending:
                    self._decode(task)
        return tasks

    def _decode(self, task: SampleTask) -> None:
        for index, (name, data) in enumerate(task.members):
            image_format = image_format_for(name)
            if image_format is None:
                continue
            try:
                decoded = decode_image(data, max_pixels=self.limits.max_image_pixels)
            except ImageTooLargeError as exc:
                task.fail("decode", f"{name}: {exc} (limits.max_image_pixels)")
                return
            except ImageDecodeError as exc:
                task.fail("decode", f"{name}: {exc}")
                return
            task.images.append(ImageWork(member=index, format=image_format, rgb=decoded.rgb))


def detect_faces(tasks: list[SampleTask], analyzer: FaceAnalyzer, method: MethodConfig, limits: LimitsConfig) -> None:
    """Find, align and embed every face; faces are numbered across a sample's images."""
    from raypipe.anonymize.pipeline import prepare_faces

    with timed(tasks, "detect"):
        for task in tasks:
            if not task.pending:
                continue
            next_index = 0
            for work in task.images:
                assert work.rgb is not None
                detections = analyzer.analyze(work.rgb)
                if len(detections) > limits.max_faces_per_image:
                    name = task.members[work.member][0]
                    task.fail(
                        "detect",
                        f"{name}: {len(detections)} faces, over the limit"
                        f" (limits.max_faces_per_image={limits.max_faces_per_image})",
                        Status.QUARANTINED,
                    )
                    break
                work.faces = prepare_faces(
                    work.rgb, detections, method.face_size, method.seed, task.key, first_index=next_index
                )
                next_index += len(work.faces)


class Detect:
    """CPU actor: loads the face analyzer once, then detects faces batch after batch."""

    def __init__(self, models: ModelsConfig, method: MethodConfig, limits: LimitsConfig) -> None:
        from raypipe.anonymize.pipeline import load_analyzer_from_config

        self.analyzer = load_analyzer_from_config(models)
        self.method, self.limits = method, limits

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        detect_faces(tasks, self.analyzer, self.method, self.limits)
        return tasks


class Anonymize:
    """GPU actor: loads the models once; anonymizes the faces of many samples in shared UNet batches."""

    def __init__(
        self, models: ModelsConfig, method: MethodConfig, limits: LimitsConfig, detect: bool, node: str = ""
    ) -> None:
        from raypipe.anonymize.pipeline import ReversePersonalization

        self.rp = ReversePersonalization.from_pretrained(models, method, load_analyzer=detect)
        self.detect, self.method, self.limits = detect, method, limits
        self.batches = 0
        optimizations = self.rp.models.optimizations
        self.provenance = {
            "node": node,
            "device": _device_name(self.rp.models.device),
            # Speed-ups that change round-off are part of how a face was made: the audit says which ran.
            "models": dict(self.rp.models.sources)
            | ({"optimizations": ",".join(optimizations)} if optimizations else {}),
            "weight_hashes": dict(self.rp.models.weight_hashes),
        }

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        from raypipe.pipeline import faults

        self.batches += 1
        if self.detect:
            assert self.rp.analyzer is not None
            detect_faces(tasks, self.rp.analyzer, self.method, self.limits)
        faults.on_anonymize_batch(self.batches)  # test hook; inert unless a RAYPIPE_FAULT_ variable is set
        with timed(tasks, "anonymize"):
            ready = [f for t in tasks if t.pending for w in t.images for f in w.faces if f.ready]
            results = {id(face): crop for face, crop in zip(ready, self.rp.anonymize_faces(ready))}
            for task in tasks:
                for image in task.images:
                    image.outputs = [results.get(id(face)) for face in image.faces]
        for task in tasks:
            task.provenance.update(self.provenance)
        return tasks


def _device_name(device: Any) -> str:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(device)}"
    return str(device)


class Compose:
    """Paste faces back, verify them with the independent re-identification gate, re-encode only the
    images that changed, and settle each sample's status.

    A face that still re-identifies (or cannot be checked), or a face found in a released image where
    nothing was anonymized, quarantines the sample: it is never released.
    """

    def __init__(self, audit: AuditConfig | None = None, analyzer: str = "insightface") -> None:
        from raypipe.audit.reid import ReidGate

        audit = audit or AuditConfig()
        self.gate = ReidGate(threshold=audit.reid_threshold)  # dlib's recognizer: independent of ArcFace
        self.check_missed = audit.check_missed_faces
        # With the same (deterministic) detector on both sides, searching an unchanged image again can
        # only repeat the first answer: re-detect only images that were changed.
        self.recheck_unchanged = analyzer != audit.recognizer

    def __call__(self, tasks: list[SampleTask]) -> list[SampleTask]:
        with timed(tasks, "compose"):
            for task in tasks:
                if task.pending:
                    self._compose(task)
                task.images = []  # pixels, crops and embeddings go no further than this stage
        return tasks

    def _compose(self, task: SampleTask) -> None:
        from raypipe.anonymize.pipeline import compose

        out_members = list(task.members)
        for work in task.images:
            assert work.rgb is not None
            name = task.members[work.member][0]
            result = compose(work.rgb, work.faces, work.outputs)
            if result.status is Status.QUARANTINED:
                task.faces.extend(result.faces)
                task.fail("anonymize", f"{name}: {result.error}", Status.QUARANTINED)
                return
            released = result.image if result.image is not None else work.rgb
            faces = self._verify(work.rgb, released, result.faces)
            task.faces.extend(faces)
            refused = [f for f in faces if f.status is not FaceStatus.ANONYMIZED]
            if refused:
                reasons = "; ".join(f"face {f.index}: {f.error}" for f in refused)
                task.fail("verify", f"{name}: {reasons}", Status.QUARANTINED)
                return
            if self.check_missed and (result.status is Status.ANONYMIZED or self.recheck_unchanged):
                missed = self._missed(released, faces)
                task.missed_faces += missed
                if missed:
                    task.fail(
                        "verify",
                        f"{name}: {missed} face(s) found in the output that were not anonymized",
                        Status.QUARANTINED,
                    )
                    return
            if result.status is Status.ANONYMIZED:
                out_members[work.member] = (name, encode_image(released, work.format))
        task.status = Status.ANONYMIZED if task.faces else Status.NO_FACE
        task.out_members = out_members

    def _verify(self, original: np.ndarray, released: np.ndarray, faces: list[FaceRecord]) -> list[FaceRecord]:
        checks = self.gate.check(original, released, [f.box for f in faces])
        return [
            replace(
                face,
                similarity=check.similarity,
                threshold=check.threshold,
                status=check.face_status or face.status,
                error=face.error if check.passed else check.reason,
            )
            for face, check in zip(faces, checks)
        ]

    def _missed(self, released: np.ndarray, faces: list[FaceRecord]) -> int:
        from raypipe.audit.reid import missed_faces

        return missed_faces(released, [f.box for f in faces], self.gate.recognizer)  # type: ignore[arg-type]
