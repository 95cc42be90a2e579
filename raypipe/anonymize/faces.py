"""Face geometry: the 5-point template, alignment to an FFHQ-like crop, feathered paste-back, per-face seeds.

No models live here. Detection and embeddings come from :mod:`raypipe.anonymize.analyzers`; this module
only moves pixels between the image and the square face crops that the diffusion step works on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]

# How much a detection box grows to become the face's "core" (the region only its own crop may write).
CORE_MARGIN = 0.15

# Bilinear sampling only aliases visibly once more than ~1.5 crop pixels fall on one image pixel; beyond
# that the crop is area-downscaled first so the pasted face is not jagged.
_PREFILTER_MIN_SCALE = 1.5


@dataclass(eq=False)
class DetectedFace:
    """One face found in an image.

    ``landmarks`` (5x2 float32: left eye centre, right eye centre, nose tip, left mouth corner, right mouth
    corner; left/right as seen in the image) and ``embedding`` (L2-normalised float32 identity vector, or
    None when it could not be computed, with the reason in ``embedding_error``) are biometric data: they
    live in memory only and must never be written to logs or to the audit record. They are hidden from
    ``repr`` so that an accidental log line cannot leak them.
    """

    box: Box
    score: float
    landmarks: np.ndarray = field(repr=False)
    embedding: np.ndarray | None = field(repr=False)
    embedding_error: str | None = None


@dataclass(eq=False)
class Paste:
    """An anonymized crop to put back into the image it was aligned from.

    ``crop`` is the FxFx3 uint8 anonymized face, ``matrix`` the 2x3 image->crop transform returned by
    :func:`align_face`, ``box`` the detection box (x1, y1, x2, y2) in image pixels.
    """

    crop: np.ndarray = field(repr=False)
    matrix: np.ndarray = field(repr=False)
    box: Box


def _ffhq_template_from_arcface() -> np.ndarray:
    """Express the ArcFace 5-point template in the unit square of an FFHQ-style crop.

    The ArcFace 112x112 template is a tight face crop. The FFHQ crop rule places a square around it:
    half-side = max(2.0 * eye distance, 1.8 * eye-to-mouth distance), centre = eye midpoint +
    0.1 * eye-to-mouth vector, and its x axis along (eye-to-eye vector - eye-to-mouth vector rotated by
    90 degrees). Mapping the ArcFace points into that square gives a template with the head plus margin
    that SDXL-sized face crops expect. Only differences of points are used, so the pixel-centre
    convention of the 112x112 template does not matter.
    """
    arcface_112 = np.array(
        [
            [38.2946, 51.6963],  # left eye
            [73.5318, 51.5014],  # right eye
            [56.0252, 71.7366],  # nose tip
            [41.5493, 92.3655],  # left mouth corner
            [70.7299, 92.2041],  # right mouth corner
        ],
        dtype=np.float64,
    )
    eye_mid = arcface_112[0:2].mean(axis=0)
    mouth_mid = arcface_112[3:5].mean(axis=0)
    eye_to_eye = arcface_112[1] - arcface_112[0]
    eye_to_mouth = mouth_mid - eye_mid
    half_side = max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth))
    centre = eye_mid + 0.1 * eye_to_mouth
    x_axis = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x_axis /= np.hypot(*x_axis)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    rel = arcface_112 - centre
    unit = np.stack([rel @ x_axis, rel @ y_axis], axis=1) / (2.0 * half_side) + 0.5
    return unit.astype(np.float64)


FACE_TEMPLATE: np.ndarray = _ffhq_template_from_arcface()
FACE_TEMPLATE.setflags(write=False)


def _template_pixels(face_size: int) -> np.ndarray:
    # Unit-square edges sit at -0.5 and face_size - 0.5 in OpenCV's pixel-centre coordinates.
    return FACE_TEMPLATE * face_size - 0.5


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation; no reflection).

    Returns the 2x3 float64 matrix M with ``dst ~= src @ M[:, :2].T + M[:, 2]`` (Umeyama 1991).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"umeyama needs two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if not np.isfinite(src_var) or src_var <= 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide or are not finite)")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    # Flipping the last singular direction when needed keeps a proper rotation: a mirrored face would
    # still be a face, but paste-back must land exactly where the crop came from.
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / src_var)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, face_size: int) -> np.ndarray:
    """2x3 float64 similarity transform from image pixels to a ``face_size`` crop (FFHQ-like framing)."""
    if face_size < 1:
        raise ValueError(f"face_size must be >= 1, got {face_size}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {landmarks.shape}")
    return umeyama(landmarks, _template_pixels(face_size))


def _check_rgb(image: np.ndarray, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise ValueError(f"{what} must be an HxWx3 uint8 array, got shape {shape} dtype {dtype}")


def align_face(image_rgb_uint8: np.ndarray, landmarks: np.ndarray, face_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the aligned ``face_size`` x ``face_size`` crop of one face; returns (crop, image->crop matrix)."""
    import cv2

    _check_rgb(image_rgb_uint8, "image")
    matrix = alignment_matrix(landmarks, face_size)
    # Reflecting the border keeps faces near the image edge surrounded by plausible content instead of
    # black bars, which the diffusion model would otherwise try to reproduce.
    crop = cv2.warpAffine(
        image_rgb_uint8,
        matrix,
        (face_size, face_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return crop, matrix


def _feather_mask(size: int, feather: float) -> np.ndarray:
    """Square float32 mask: 1 inside, smooth (smoothstep) falloff to 0 over ``feather * size`` pixels."""
    width = feather * size
    if width <= 0:
        return np.ones((size, size), dtype=np.float32)
    centres = np.arange(size, dtype=np.float32) + 0.5
    ramp = np.clip(np.minimum(centres, size - centres) / width, 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)
    return np.outer(ramp, ramp).astype(np.float32)


def _crop_scale(matrix: np.ndarray) -> float:
    """Crop pixels per image pixel (the similarity's scale factor)."""
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def _prefiltered(crop: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-downscale a crop that is much larger than its footprint in the image; adjust the matrix."""
    import cv2

    size = crop.shape[0]
    scale = _crop_scale(matrix)
    crop_f = crop.astype(np.float32)
    if scale <= _PREFILTER_MIN_SCALE:
        return crop_f, matrix
    new_size = max(1, round(size / scale))
    ratio = new_size / size
    small = cv2.resize(crop_f, (new_size, new_size), interpolation=cv2.INTER_AREA)
    # Resizing maps pixel-centre coordinates as x' + 0.5 = ratio * (x + 0.5).
    adjusted = matrix * ratio
    adjusted[:, 2] += 0.5 * ratio - 0.5
    return small, adjusted


def _roi_matrix(matrix: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """image->crop matrix re-expressed for a region of interest starting at (x0, y0)."""
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return shifted


def _warp_into_roi(
    crop_f: np.ndarray, matrix: np.ndarray, roi: tuple[int, int, int, int], border: int, value: float = 0.0
) -> np.ndarray:
    import cv2

    x0, y0, x1, y1 = roi
    return cv2.warpAffine(
        crop_f,
        _roi_matrix(matrix, x0, y0),
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=value,
    )


def warp_crop_to_image(crop: np.ndarray, matrix: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """The crop warped back into image coordinates (HxWx3 float32), exactly as :func:`paste_faces` sees it.

    Outside the crop's footprint the content is reflected, so a core that pokes out of the crop is still
    filled with anonymized pixels rather than black.
    """
    import cv2

    crop_f, adjusted = _prefiltered(crop, np.asarray(matrix, dtype=np.float64))
    height, width = image_shape[:2]
    return _warp_into_roi(crop_f, adjusted, (0, 0, width, height), cv2.BORDER_REFLECT_101)


def core_box(box: Box, image_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Pixel range (x0, y0, x1, y1; end exclusive) of a face's core: its box grown by CORE_MARGIN, clipped.

    Every pixel that the grown box touches at all belongs to the core, so no sliver of the face escapes.
    """
    height, width = image_shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    grow_x, grow_y = 0.5 * CORE_MARGIN * (x2 - x1), 0.5 * CORE_MARGIN * (y2 - y1)
    return (
        int(np.clip(np.floor(x1 - grow_x), 0, width)),
        int(np.clip(np.floor(y1 - grow_y), 0, height)),
        int(np.clip(np.ceil(x2 + grow_x), 0, width)),
        int(np.clip(np.ceil(y2 + grow_y), 0, height)),
    )


def _box_centre(box: Box) -> tuple[float, float]:
    return (0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3]))


def _owner_map(
    roi: tuple[int, int, int, int],
    cores: Sequence[tuple[int, int, int, int]],
    centres: Sequence[tuple[float, float]],
) -> np.ndarray:
    """Index of the face owning each pixel of ``roi`` (-1 where no core covers it).

    A pixel inside several cores goes to the face whose box centre is nearest (ties: lower index), so
    every core pixel has exactly one writer.
    """
    x0, y0, x1, y1 = roi
    owner = np.full((y1 - y0, x1 - x0), -1, dtype=np.int32)
    best = np.full(owner.shape, np.inf, dtype=np.float64)
    for index, ((cx0, cy0, cx1, cy1), (mx, my)) in enumerate(zip(cores, centres)):
        ax0, ay0, ax1, ay1 = max(cx0, x0), max(cy0, y0), min(cx1, x1), min(cy1, y1)
        if ax0 >= ax1 or ay0 >= ay1:
            continue
        ys = np.arange(ay0, ay1, dtype=np.float64)[:, None] - my
        xs = np.arange(ax0, ax1, dtype=np.float64)[None, :] - mx
        dist = ys * ys + xs * xs
        sl = (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0))
        closer = dist < best[sl]
        best[sl][closer] = dist[closer]
        owner[sl][closer] = index
    return owner


def _paste_roi(
    crop_size: int, matrix: np.ndarray, core: tuple[int, int, int, int], image_shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """Image rectangle covering the crop's footprint and the face's core, clipped to the image."""
    height, width = image_shape[:2]
    edge = crop_size - 0.5
    corners = np.array([[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]])
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2]
    points = corners @ inverse[:, :2].T + inverse[:, 2]
    x0 = min(int(np.floor(points[:, 0].min())), core[0])
    y0 = min(int(np.floor(points[:, 1].min())), core[1])
    x1 = max(int(np.ceil(points[:, 0].max())) + 1, core[2])
    y1 = max(int(np.ceil(points[:, 1].max())) + 1, core[3])
    return (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))


def _check_paste(paste: Paste, index: int) -> None:
    _check_rgb(paste.crop, f"pastes[{index}].crop")
    if paste.crop.shape[0] != paste.crop.shape[1]:
        raise ValueError(f"pastes[{index}].crop must be square, got {paste.crop.shape}")
    matrix = np.asarray(paste.matrix)
    if matrix.shape != (2, 3) or not np.all(np.isfinite(matrix)) or _crop_scale(matrix) <= 0:
        raise ValueError(f"pastes[{index}].matrix must be a finite, invertible 2x3 affine matrix")


def paste_faces(image: np.ndarray, pastes: Sequence[Paste], feather: float = 0.1) -> np.ndarray:
    """Put anonymized crops back into ``image``; returns a new array (the input is never modified).

    Each crop is inverse-warped with a feathered mask (1 inside, smooth falloff over ``feather`` x crop
    size towards the crop border). Pixels outside every mask keep their exact input bytes. Each face's
    core (box grown by CORE_MARGIN) is owned by one face and written only from that face's crop with
    full opacity, so a neighbour's crop, which contains a reconstruction of this face, can never
    re-expose it.
    """
    import cv2

    _check_rgb(image, "image")
    if not 0.0 <= feather <= 0.5:
        raise ValueError(f"feather must be in [0, 0.5] (a fraction of the crop size), got {feather}")
    for index, paste in enumerate(pastes):
        _check_paste(paste, index)
    out = image.copy()
    cores = [core_box(p.box, image.shape) for p in pastes]
    centres = [_box_centre(p.box) for p in pastes]
    for index, paste in enumerate(pastes):
        matrix = np.asarray(paste.matrix, dtype=np.float64)
        roi = _paste_roi(paste.crop.shape[0], matrix, cores[index], image.shape)
        x0, y0, x1, y1 = roi
        if x0 >= x1 or y0 >= y1:
            continue
        crop_f, adjusted = _prefiltered(paste.crop, matrix)
        colour = _warp_into_roi(crop_f, adjusted, roi, cv2.BORDER_REFLECT_101)
        mask = _warp_into_roi(_feather_mask(crop_f.shape[0], feather), adjusted, roi, cv2.BORDER_CONSTANT)
        owner = _owner_map(roi, cores, centres)
        mask[owner == index] = 1.0
        mask[(owner >= 0) & (owner != index)] = 0.0
        touched = mask > 0.0
        if not touched.any():
            continue
        region = out[y0:y1, x0:x1]
        alpha = mask[touched][:, None]
        blended = region[touched].astype(np.float32) * (1.0 - alpha) + colour[touched] * alpha
        region[touched] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def face_seed(run_seed: int, key: str, face_index: int) -> int:
    """Deterministic 63-bit seed for one face, the same on every process and machine.

    sha256 over a canonical JSON encoding of the three values, so ("a", 12) and ("a1", 2) cannot collide
    the way a plain concatenation would.
    """
    payload = json.dumps([int(run_seed), str(key), int(face_index)], separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(payload).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of a face's ``attempt``-th retry (1, 2, ...), derived from its first seed like
    :func:`face_seed`: deterministic, and new for every attempt."""
    payload = json.dumps(["retry", int(seed), int(attempt)], separators=(",", ":")).encode("utf-8")
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big") >> 1
