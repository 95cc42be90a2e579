"""``benchmarks/reid_calibration.py --quick`` on two real faces: every field the report reads, and every
genuine pair flagged by both of the gate's candidate rules."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.helpers import load_benchmark

pytest.importorskip("dlib")
pytest.importorskip("skimage")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def calibration() -> ModuleType:
    return load_benchmark("reid_calibration")


def test_quick_run_flags_every_genuine_pair_and_writes_both_distributions(
    calibration: ModuleType, tmp_path: Path
) -> None:
    out = tmp_path / "reid.json"
    assert calibration.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "reid_calibration" and report["settings"]["quick"]
    assert report["device"]["name"] and report["date"][:2] == "20"
    people = {face["person"] for face in report["faces"]}
    assert people == {"Eileen Collins", "Grace Hopper"}
    transforms = report["settings"]["transforms"]
    assert len(report["genuine"]) == len(report["faces"]) * len(transforms)
    assert len(report["impostor"]) == 1  # one pair of different people
    variants = report["impostor_variants"]  # each transformed face against the other person's original
    assert variants["n"] == len(report["genuine"]) == len(variants["scores"]["euclidean"])
    for metric, threshold in (("euclidean", 0.6), ("cosine", 0.9)):
        summary = report["metrics"][metric]
        assert summary["threshold"] == threshold
        assert summary["genuine_flagged_fraction"] == 1.0  # the gate must catch every re-encoded face
        for side in ("genuine", "impostor"):
            stats = summary[side]
            assert stats["min"] <= stats["median"] <= stats["max"]
            assert summary["margins"][side] > 0
        assert report["impostor_scores"][metric] == sorted(p[metric] for p in report["impostor"])
    euclidean, cosine = report["metrics"]["euclidean"], report["metrics"]["cosine"]
    # the same person stays close, different people do not: on both scales
    assert euclidean["genuine"]["max"] < 0.6 < euclidean["impostor"]["min"]
    assert cosine["genuine"]["min"] >= 0.9 > cosine["impostor"]["max"]
    assert report["verdict"]["metric"] in ("euclidean", "cosine")
    thumbnails = report["thumbnails"]
    assert thumbnails["faces"] == 2 and thumbnails["size_px"] == [25, 25]
    assert set(thumbnails["metrics"]) == {"euclidean", "cosine"}


def test_boxes_follow_the_geometry(calibration: ModuleType) -> None:
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[30, 20] = 255  # the face box's top-left corner
    box = (20.0, 30.0, 60.0, 80.0)
    mirrored, mirrored_box = calibration.TRANSFORMS["mirror"](image, box)
    assert mirrored_box == (140.0, 30.0, 180.0, 80.0) and mirrored[30, 179].all()
    resized, resized_box = calibration.TRANSFORMS["resize 2.0x"](image, box)
    assert resized.shape == (200, 400, 3) and resized_box == (40.0, 60.0, 120.0, 160.0)
    cropped, cropped_box = calibration.TRANSFORMS["crop halfway"](image, box)
    # half the space on each side of the face goes: the face itself is never cut
    assert cropped.shape == (75, 120, 3) and cropped_box == (10.0, 15.0, 50.0, 65.0)
