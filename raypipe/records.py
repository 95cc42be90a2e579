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


@dataclass(frozen=True)
class FaceRecord:
    """One face of one image. Holds no biometric data: only the box, scores and outcomes."""

    index: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    status: FaceStatus
    seed: int | None = None
    error: str | None = None
    similarity: float | None = None  # original vs anonymized, independent recognizer
    threshold: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "box": list(self.box),
            "score": self.score,
            "status": self.status.value,
            "seed": self.seed,
            "error": self.error,
            "similarity": self.similarity,
            "threshold": self.threshold,
        }
