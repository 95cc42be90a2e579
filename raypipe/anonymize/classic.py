"""Classic ways to hide a face: blur, pixelate, mask.

They keep nothing of a face's pose or expression, so raypipe uses them only as the gate's fallback
(``audit.fallback``): for a face that diffusion could not anonymize after its retries, hiding it is
better than withholding the whole image. The gate then checks the result like any other face.

Each method works on the face box grown by :data:`MARGIN` of its size on every side (clipped to the
image), so hair line, ears and jaw go too, and returns a new image; the input is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raypipe.anonymize.faces import Box

METHODS = ("blur", "pixelate", "mask")
MARGIN = 0.15  # of the box's width and height, added on each side
BLUR_SIGMA = 0.25  # Gaussian sigma, as a fraction of the grown box's larger side
PIXELATE_BLOCKS = 6  # blocks across the grown box's larger side
MASK_VALUE = 0  # the grey level a mask paints (black)


def region(shape: Sequence[int], box: Box, margin: float = MARGIN) -> tuple[int, int, int, int]:
    """The integer pixel region (x1, y1, x2, y2) a method changes: ``box`` grown and clipped."""
    height, width = int(shape[0]), int(shape[1])
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(np.floor(x1 - dx))), max(0, int(np.floor(y1 - dy)))
    right, bottom = min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy)))
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"face box {tuple(box)} lies outside the {width}x{height} image")
    return left, top, right, bottom


def obscure(image: np.ndarray, boxes: Sequence[Box], method: str) -> np.ndarray:
    """A copy of ``image`` (HxWx3 uint8) with every box hidden by ``method`` (see :data:`METHODS`)."""
    import cv2

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    out = np.array(image, dtype=np.uint8, copy=True)
    for box in boxes:
        left, top, right, bottom = region(out.shape, box)
        patch = out[top:bottom, left:right]
        side = max(patch.shape[0], patch.shape[1])
        if method == "mask":
            patch[...] = MASK_VALUE
        elif method == "pixelate":
            blocks = (
                max(1, round(PIXELATE_BLOCKS * patch.shape[1] / side)),
                max(1, round(PIXELATE_BLOCKS * patch.shape[0] / side)),
            )
            small = cv2.resize(patch, blocks, interpolation=cv2.INTER_AREA)
            patch[...] = cv2.resize(small, (patch.shape[1], patch.shape[0]), interpolation=cv2.INTER_NEAREST)
        else:
            sigma = max(1.0, BLUR_SIGMA * side)
            patch[...] = cv2.GaussianBlur(patch, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return out
