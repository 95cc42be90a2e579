"""Utility per face on real photos, with dlib's real 68-point model: an unchanged face has no deltas, a
rotated face the angle it was rotated by, a mirrored face the opposite yaw."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from raypipe.anonymize.analyzers import DlibAnalyzer
from raypipe.audit.utility import FIELDS, Utility, compare, head_pose, measure

FACE = (175.0, 76.0, 266.0, 167.0)  # the astronaut's face, where dlib's HOG finds it


@pytest.fixture(scope="module")
def dlib() -> DlibAnalyzer:
    return DlibAnalyzer()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    centre = ((FACE[0] + FACE[2]) / 2, (FACE[1] + FACE[3]) / 2)
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)  # counter-clockwise on screen
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


def test_an_unchanged_face_has_no_deltas(dlib: DlibAnalyzer, astronaut: np.ndarray) -> None:
    utility = measure(dlib, astronaut, astronaut.copy(), FACE)
    assert all(getattr(utility, name) == 0.0 for name in FIELDS)
    assert utility.pose_change == 0.0


@pytest.mark.parametrize("degrees", [5.0, 10.0, 20.0])
def test_a_rotated_face_changes_roll_by_the_angle(dlib: DlibAnalyzer, astronaut: np.ndarray, degrees: float) -> None:
    utility = measure(dlib, astronaut, rotated(astronaut, degrees), FACE)
    assert utility.roll_change == pytest.approx(-degrees, abs=2.0)  # measured within 0.4 degrees at 5-15
    assert utility.landmark_drift is not None and utility.landmark_drift > 0.01 * degrees
    assert utility.pose_change is not None and utility.pose_change >= degrees - 2.0


def test_a_mirrored_face_changes_the_sign_of_its_yaw(dlib: DlibAnalyzer, astronaut: np.ndarray) -> None:
    width = astronaut.shape[1]
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    box = (width - FACE[2], FACE[1], width - FACE[0], FACE[3])
    yaw, _, roll = head_pose(dlib.landmarks68(astronaut, FACE), astronaut.shape)  # type: ignore[arg-type,misc]
    yaw_m, _, roll_m = head_pose(dlib.landmarks68(mirrored, box), mirrored.shape)  # type: ignore[arg-type,misc]
    assert abs(yaw) > 3 and np.sign(yaw_m) == -np.sign(yaw)  # measured -6.9 and +7.7 degrees
    assert yaw_m == pytest.approx(-yaw, abs=2.0) and roll_m == pytest.approx(-roll, abs=2.0)


def test_eye_and_mouth_openness_follow_the_lids_and_lips(dlib: DlibAnalyzer, astronaut: np.ndarray) -> None:
    # The astronaut's real landmarks, with the lower lid of each eye and the lower inner lip moved down.
    points = dlib.landmarks68(astronaut, FACE)
    assert points is not None
    moved = points.copy()
    moved[[40, 41, 46, 47], 1] += 2.0  # lower eyelids: each eye opens by 2 px
    moved[[65, 66, 67], 1] += 6.0  # lower inner lip: the mouth opens by 6 px
    utility = compare(points, moved, astronaut.shape)
    eye_width = np.mean([np.linalg.norm(points[36] - points[39]), np.linalg.norm(points[42] - points[45])])
    assert utility.eye_change == pytest.approx(2.0 / eye_width, rel=0.1)
    assert utility.mouth_change == pytest.approx(6.0 / np.linalg.norm(points[48] - points[54]), rel=0.05)
    assert utility.landmark_drift is not None and utility.landmark_drift > 0


def test_a_face_that_cannot_be_measured_has_nulls(dlib: DlibAnalyzer, astronaut: np.ndarray) -> None:
    assert measure(dlib, astronaut, astronaut, (600.0, 600.0, 700.0, 700.0)) == Utility()
    assert Utility().pose_change is None
