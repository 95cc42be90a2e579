"""Classic face hiding (the gate's fallback): only the grown box changes, the input is never modified."""

from __future__ import annotations

import numpy as np
import pytest

from raypipe.anonymize.classic import METHODS, obscure, region


def test_region_grows_the_box_and_clips_it_to_the_image() -> None:
    assert region((100, 200, 3), (20.0, 30.0, 60.0, 70.0)) == (14, 24, 66, 76)
    assert region((100, 200, 3), (-10.0, 90.0, 30.0, 130.0)) == (0, 84, 36, 100)
    with pytest.raises(ValueError, match="outside"):
        region((100, 200, 3), (300.0, 300.0, 340.0, 340.0))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_changes_only_its_region(method: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)
    before = image.copy()
    out = obscure(image, [(40.0, 20.0, 80.0, 60.0)], method)
    assert np.array_equal(image, before)  # the input is untouched
    left, top, right, bottom = region(image.shape, (40.0, 20.0, 80.0, 60.0))
    inside = out[top:bottom, left:right].astype(float)
    outside = out.copy()
    outside[top:bottom, left:right] = before[top:bottom, left:right]
    assert np.array_equal(outside, before)
    assert inside.std() < before[top:bottom, left:right].astype(float).std() / 2  # detail is gone


def test_an_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="'swirl'"):
        obscure(np.zeros((8, 8, 3), np.uint8), [(0.0, 0.0, 4.0, 4.0)], "swirl")
