"""The data that flows through raypipe: sample statuses and per-face records."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(str, enum.Enum):
    """The one final state of every input sample.

    - ``anonymized``: every detected face was anonymized and the image is released.
    - ``no_face``: no face was found; the sample is copied byte for byte.
    - ``quarantined``: a face could not be embedded or anonymized, or still re-identifies;
      the image is never released.
    - ``failed``: the input could not be read or decoded; the error names the step.
    """

    ANONYMIZED = "anonymized"
    NO_FACE = "no_face"
    QUARANTINED = "quarantined"
    FAILED = "failed"

    @property
    def releasable(self) -> bool:
        return self in (Status.ANONYMIZED, Status.NO_FACE)


class FaceStatus(str, enum.Enum):
    """What happened to one detected face."""

    ANONYMIZED = "anonymized"
    NOT_EMBEDDABLE = "not_embeddable"  # detected, but no identity embedding could be computed
    ANONYMIZE_ERROR = "anonymize_error"  # the diffusion step raised or produced non-finite values
    REIDENTIFIED = "reidentified"  # the independent recognizer still matches the original identity
    UNCHECKED = "unchecked"  # the independent recognizer could not check the result
    # Hidden by a classic method: a face that kept failing the gate (audit.fallback), or a doubtful
    # detection that did not pass (masked; the reason says which).
    OBSCURED = "obscured"

    @property
    def released(self) -> bool:
        """Whether a face in this state lets its image be released."""
        return self in (FaceStatus.ANONYMIZED, FaceStatus.OBSCURED)


@dataclass(frozen=True)
class FaceRecord:
    """One face of one image. Holds no biometric data: only the box, scores and outcomes."""

    index: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    status: FaceStatus
    seed: int | None = None
    error: str | None = None  # why a face was not anonymized, or why it counts as not a face
    distance: float | None = None  # original vs released, independent recognizer (lower: more alike)
    threshold: float | None = None  # the face passed at a distance >= this
    attempts: int | None = None  # diffusion attempts (1 + retries) before the verdict
    guidance_scale: float | None = None  # the guidance scale of the last attempt
    # Utility, released minus original at the same box (raypipe.audit.utility); None: not measured.
    yaw_change: float | None = None  # degrees
    pitch_change: float | None = None
    roll_change: float | None = None
    landmark_drift: float | None = None  # mean 68-point displacement over the inter-ocular distance
    eye_change: float | None = None  # eye aspect ratio
    mouth_change: float | None = None  # inner-lip opening over mouth width
    utility_flags: tuple[str, ...] = ()  # utility thresholds this face crossed (flagged, still released)

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "box": list(self.box),
            "score": self.score,
            "status": self.status.value,
            "seed": self.seed,
            "error": self.error,
            "distance": self.distance,
            "threshold": self.threshold,
            "attempts": self.attempts,
            "guidance_scale": self.guidance_scale,
            "yaw_change": self.yaw_change,
            "pitch_change": self.pitch_change,
            "roll_change": self.roll_change,
            "landmark_drift": self.landmark_drift,
            "eye_change": self.eye_change,
            "mouth_change": self.mouth_change,
            "utility_flags": list(self.utility_flags),
        }
