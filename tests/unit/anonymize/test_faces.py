"""Face geometry: template, alignment, feathered and overlap-safe paste-back, per-face seeds."""

from __future__ import annotations

import numpy as np
import pytest

from raypipe.anonymize.faces import (
    FACE_TEMPLATE,
    Paste,
    align_face,
    alignment_matrix,
    core_box,
    face_seed,
    paste_faces,
    umeyama,
    warp_crop_to_image,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def synthetic_face(
    centre: tuple[float, float], eye_distance: float, angle: float = 0.0
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Landmarks of a template-shaped face and a detector-like box (about the inner half of its crop)."""
    template_eyes = np.hypot(*(FACE_TEMPLATE[1] - FACE_TEMPLATE[0]))
    side = eye_distance / template_eyes
    rot = similarity(side, angle, 0.0, 0.0)[:, :2]
    landmarks = (FACE_TEMPLATE - 0.5) @ rot.T + np.asarray(centre)
    half = 0.25 * side
    box = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    return landmarks.astype(np.float32), box


def smooth_image(height: int, width: int) -> np.ndarray:
    """Low-frequency colour pattern: bilinear resampling errs only by round-off on it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        127 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0),
        127 + 100 * np.cos(x / 37.0 + y / 29.0),
        127 + 60 * np.sin((x + y) / 41.0),
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def solid(size: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3)).copy()


def footprint(matrix: np.ndarray, face_size: int, image_shape: tuple[int, ...], pad: float) -> np.ndarray:
    """Image pixels whose centre maps inside the crop square (grown by ``pad`` crop pixels)."""
    height, width = image_shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    crop_xy = apply(matrix, np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64))
    lo, hi = -0.5 - pad, face_size - 0.5 + pad
    inside = np.all((crop_xy >= lo) & (crop_xy <= hi), axis=1)
    return inside.reshape(height, width)


def core_mask(box: tuple[float, float, float, float], image_shape: tuple[int, ...]) -> np.ndarray:
    x0, y0, x1, y1 = core_box(box, image_shape)
    mask = np.zeros(image_shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_template_is_the_ffhq_crop_of_the_arcface_points() -> None:
    assert FACE_TEMPLATE.shape == (5, 2)
    assert np.all((FACE_TEMPLATE > 0) & (FACE_TEMPLATE < 1))
    left_eye, right_eye, nose, left_mouth, right_mouth = FACE_TEMPLATE
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    # The FFHQ rule, read back from the template: the unit square is exactly the crop it defines.
    eye_mid = (left_eye + right_eye) / 2
    eye_to_mouth = (left_mouth + right_mouth) / 2 - eye_mid
    half_side = max(2.0 * np.hypot(*(right_eye - left_eye)), 1.8 * np.hypot(*eye_to_mouth))
    assert half_side == pytest.approx(0.5, abs=1e-9)
    np.testing.assert_allclose(eye_mid + 0.1 * eye_to_mouth, [0.5, 0.5], atol=1e-9)
    # Head plus margin: eyes a little above the centre, mouth in the lower third, face upright.
    assert 0.44 < eye_mid[1] < 0.5 and 0.7 < left_mouth[1] < 0.8
    assert abs(left_eye[1] - right_eye[1]) < 1e-3
    assert not FACE_TEMPLATE.flags.writeable


def test_umeyama_recovers_a_known_similarity_exactly() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, size=(7, 2))
    known = similarity(1.7, 0.4, -33.0, 120.5)
    np.testing.assert_allclose(umeyama(src, apply(known, src)), known, atol=1e-9)

    # alignment_matrix fits image landmarks to the template: landmarks made by the inverse transform
    # of the template pixels must give the transform back.
    face_size = 512
    target = FACE_TEMPLATE * face_size - 0.5
    inverse = np.linalg.inv(np.vstack([known, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(alignment_matrix(apply(inverse, target), face_size), known, atol=1e-9)


def test_umeyama_never_reflects_and_rejects_degenerate_landmarks() -> None:
    src = np.array([[0, 0], [10, 0], [5, 8], [2, 12], [8, 12]], dtype=np.float64)
    mirrored = src * np.array([-1.0, 1.0])
    assert np.linalg.det(umeyama(src, mirrored)[:, :2]) > 0
    with pytest.raises(ValueError, match="degenerate"):
        alignment_matrix(np.ones((5, 2)), 256)
    with pytest.raises(ValueError, match="shape"):
        alignment_matrix(np.ones((4, 2)), 256)


@pytest.mark.parametrize(("face_size", "eye_distance"), [(192, 60.0), (512, 40.0)])
def test_align_then_paste_unchanged_crop_is_round_off(face_size: int, eye_distance: float) -> None:
    # (512, 40) makes the crop ~3x larger than its footprint, exercising the area pre-filter.
    image = smooth_image(300, 400)
    landmarks, box = synthetic_face((210.0, 140.0), eye_distance, angle=0.2)
    crop, matrix = align_face(image, landmarks, face_size)
    assert crop.shape == (face_size, face_size, 3) and crop.dtype == np.uint8
    out = paste_faces(image, [Paste(crop, matrix, box)])
    diff = np.abs(out.astype(np.int16) - image.astype(np.int16))
    assert diff.max() <= 3
    assert diff.mean() < 0.3
    assert not diff[~footprint(matrix, face_size, image.shape, pad=1.0)].any()


def test_solid_crop_changes_only_pixels_under_its_mask() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)  # noise: any change is visible
    landmarks, box = synthetic_face((150.0, 120.0), 30.0, angle=-0.3)
    _, matrix = align_face(image, landmarks, 128)
    out = paste_faces(image, [Paste(solid(128, RED), matrix, box)])
    outside = ~footprint(matrix, 128, image.shape, pad=1.0)
    assert outside.any()
    np.testing.assert_array_equal(out[outside], image[outside])
    changed = np.any(out != image, axis=-1)
    assert changed.sum() > 0.5 * (~outside).sum()
    core = core_mask(box, image.shape)
    assert np.all(out[core] == RED)
    # Even when the feather reaches deep into the crop, the core is fully replaced.
    widest = paste_faces(image, [Paste(solid(128, RED), matrix, box)], feather=0.5)
    assert np.all(widest[core] == RED)


def test_mask_is_feathered_towards_the_crop_border() -> None:
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    landmarks, box = synthetic_face((100.0, 100.0), 35.0)
    _, matrix = align_face(image, landmarks, 256)
    white = solid(256, (255, 255, 255))

    def intermediate(feather: float) -> tuple[np.ndarray, int]:
        grey = paste_faces(image, [Paste(white, matrix, box)], feather=feather)[..., 0].astype(int)
        return grey, int(((grey > 0) & (grey < 255)).sum())

    feathered, n_soft = intermediate(0.1)
    _, n_hard = intermediate(0.0)
    assert feathered[100, 100] == 255
    assert n_soft > 4 * n_hard  # a hard mask only has a one-pixel anti-aliased rim
    # Along a ray from the face centre to the crop border the mask only falls off.
    ray = feathered[100, 100:200]
    assert np.all(np.diff(ray) <= 0)
    assert ray[-1] == 0 and len(np.unique(ray)) > 5


def test_large_crop_is_area_filtered_when_pasted_small() -> None:
    # A 1-pixel checkerboard crop shrunk ~4x must land as its average grey, not as aliasing moire.
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    landmarks, box = synthetic_face((100.0, 100.0), 30.0)
    _, matrix = align_face(image, landmarks, 512)
    checker = ((np.indices((512, 512)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = paste_faces(image, [Paste(np.repeat(checker[..., None], 3, axis=2), matrix, box)])
    core = out[core_mask(box, image.shape)][:, 0].astype(int)
    assert np.abs(core - 127.5).max() <= 8


def two_neighbours() -> tuple[np.ndarray, list[tuple[np.ndarray, tuple[float, float, float, float]]]]:
    image = smooth_image(260, 420)
    faces = [synthetic_face((150.0, 130.0), 40.0, 0.05), synthetic_face((270.0, 135.0), 40.0, -0.1)]
    return image, faces


def test_neighbour_crop_never_reexposes_a_face_core() -> None:
    # A small face next to a large one: the large face's crop covers the small face's whole core.
    image = smooth_image(340, 520)
    lm_a, box_a = synthetic_face((150.0, 150.0), 25.0, 0.05)
    lm_b, box_b = synthetic_face((300.0, 170.0), 90.0, -0.05)
    crop_a, m_a = align_face(image, lm_a, 256)
    crop_b, m_b = align_face(image, lm_b, 256)
    core_a, core_b = core_mask(box_a, image.shape), core_mask(box_b, image.shape)
    assert not (core_a & core_b).any()
    assert footprint(m_b, 256, image.shape, pad=-2.0)[core_a].all()
    assert footprint(m_a, 256, image.shape, pad=-2.0)[core_b].any()

    # Each anonymized crop replaces only its own face (the centre of the crop, which holds the core)
    # and keeps the neighbour's ORIGINAL pixels: exactly the hazard of B's paste bringing A back.
    inner = slice(128 - 81, 128 + 81)
    anon_a, anon_b = crop_a.copy(), crop_b.copy()
    anon_a[inner, inner] = RED
    anon_b[inner, inner] = BLUE
    original_a_in_b = warp_crop_to_image(anon_b, m_b, image.shape)[core_a]
    assert not np.any(np.all(original_a_in_b == BLUE, axis=-1)), "B's crop holds A's original face"
    for order in ([0, 1], [1, 0]):
        pastes = [Paste(anon_a, m_a, box_a), Paste(anon_b, m_b, box_b)]
        out = paste_faces(image, [pastes[i] for i in order])
        assert np.all(out[core_a] == RED), "A's core must come only from A's anonymized crop"
        assert np.all(out[core_b] == BLUE), "B's core must come only from B's anonymized crop"


def test_core_equals_its_own_warped_crop() -> None:
    image, ((lm_a, box_a), (lm_b, box_b)) = two_neighbours()
    crop_a, m_a = align_face(image, lm_a, 256)
    crop_b, m_b = align_face(image, lm_b, 256)
    anon_a, anon_b = 255 - crop_a, 255 - crop_b  # textured, and different from the original everywhere
    out = paste_faces(image, [Paste(anon_a, m_a, box_a), Paste(anon_b, m_b, box_b)])
    for anon, matrix, box in ((anon_a, m_a, box_a), (anon_b, m_b, box_b)):
        core = core_mask(box, image.shape)
        expected = np.clip(np.rint(warp_crop_to_image(anon, matrix, image.shape)), 0, 255)
        # <= 1: the paste warps a sub-rectangle, whose fixed-point sampling grid may round differently.
        assert np.abs(out[core].astype(int) - expected[core].astype(int)).max() <= 1


def test_overlapping_cores_have_one_owner_each_and_no_gap() -> None:
    image = np.full((220, 300, 3), 128, dtype=np.uint8)
    lm_a, box_a = synthetic_face((130.0, 110.0), 40.0)
    lm_b, box_b = synthetic_face((175.0, 118.0), 40.0)
    _, m_a = align_face(image, lm_a, 128)
    _, m_b = align_face(image, lm_b, 128)
    core_a, core_b = core_mask(box_a, image.shape), core_mask(box_b, image.shape)
    both = core_a & core_b
    assert both.any()
    out = paste_faces(image, [Paste(solid(128, RED), m_a, box_a), Paste(solid(128, BLUE), m_b, box_b)])
    union = core_a | core_b
    is_red, is_blue = np.all(out == RED, axis=-1), np.all(out == BLUE, axis=-1)
    assert np.all(is_red[union] | is_blue[union]), "every core pixel is written by exactly one face"
    ys, xs = np.nonzero(both)
    nearer_a = (xs - 130.0) ** 2 + (ys - 110.0) ** 2 < (xs - 175.0) ** 2 + (ys - 118.0) ** 2
    np.testing.assert_array_equal(is_red[ys, xs], nearer_a)
    assert np.all(is_red[core_a & ~core_b]) and np.all(is_blue[core_b & ~core_a])


def test_inputs_are_never_modified() -> None:
    image, ((landmarks, box), _) = two_neighbours()
    before = image.copy()
    crop, matrix = align_face(image, landmarks, 128)
    crop_before, matrix_before = crop.copy(), matrix.copy()
    out = paste_faces(image, [Paste(crop, matrix, box)])
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)
    np.testing.assert_array_equal(crop, crop_before)
    np.testing.assert_array_equal(matrix, matrix_before)
    unchanged = paste_faces(image, [])
    assert unchanged is not image
    np.testing.assert_array_equal(unchanged, image)


def test_paste_rejects_bad_arguments() -> None:
    image, ((landmarks, box), _) = two_neighbours()
    crop, matrix = align_face(image, landmarks, 64)
    with pytest.raises(ValueError, match="feather"):
        paste_faces(image, [Paste(crop, matrix, box)], feather=0.8)
    with pytest.raises(ValueError, match=r"pastes\[0\]\.crop"):
        paste_faces(image, [Paste(crop[..., 0], matrix, box)])
    with pytest.raises(ValueError, match="image"):
        paste_faces(image.astype(np.float32), [])


def test_face_seed_is_deterministic_and_distinct() -> None:
    seed = face_seed(1234, "shard-000/img_001", 0)
    assert seed == face_seed(1234, "shard-000/img_001", 0)
    assert 0 <= seed < 2**63
    # A fixed value: the encoding must never drift, or reruns on other machines give other pixels.
    assert seed == face_seed(1234, "shard-000/img_001", 0) == 7226950724421148064
    others = {
        face_seed(1235, "shard-000/img_001", 0),
        face_seed(1234, "shard-000/img_002", 0),
        face_seed(1234, "shard-000/img_001", 1),
        face_seed(1234, "shard-000/img_00", 10),
    }
    assert seed not in others and len(others) == 4
