"""Small helpers shared by unit and integration tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """A clock a test moves by hand: ``clock.now = 30.0``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def pasted_region(image_shape: tuple[int, ...], matrix: np.ndarray, face_size: int) -> np.ndarray:
    """Pixels the crop square can touch after the inverse warp (plus 2 px for interpolation)."""
    import cv2

    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [face_size, 0], [face_size, face_size], [0, face_size]], dtype=np.float64)
    quad = corners @ inverse[:, :2].T + inverse[:, 2]
    mask = np.zeros(image_shape[:2], dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(quad).astype(np.int32)], 1)
    return cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)


def face_regions(image: np.ndarray, face_size: int) -> np.ndarray:
    """Union of the pasted regions of every face the dlib analyzer finds in ``image``."""
    from raypipe.anonymize.analyzers import DlibAnalyzer
    from raypipe.anonymize.faces import alignment_matrix

    region = np.zeros(image.shape[:2], dtype=bool)
    for face in DlibAnalyzer().analyze(image):
        region |= pasted_region(image.shape, alignment_matrix(face.landmarks, face_size), face_size)
    return region


def released_members(task: Any) -> dict[str, bytes]:
    """A composed task's released members as bytes: those released unchanged are read back from the
    input shard through their references, as finalize reads them."""
    from raypipe.io.spans import MemberRef, SpanReader
    from raypipe.io.storage import StorageOptions

    with SpanReader(task.source_uri, StorageOptions()) as reader:
        return {name: reader.read(data) if isinstance(data, MemberRef) else data for name, data in task.out_members}
