"""``no_face`` means every picture was scanned: faces hidden where a scanner of the main picture alone
would not look are found (quarantine) or their member is refused (failed), never released as no_face.

Real detection (dlib) on a real face (the astronaut), through the job's read, decode and detect stages.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypipe.config import AuditConfig, LimitsConfig, MethodConfig
from raypipe.io.storage import StorageOptions
from raypipe.io.tars import Sample, tar_bytes
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.stages import Compose, Decode, detect_faces
from raypipe.pipeline.task import SampleTask
from tests.helpers import released_members
from tests.integration.hostile import (
    encoded,
    exif_rotated,
    exif_thumbnail_segment,
    face_crop,
    face_in_alpha,
    jpeg_segment,
    multi_picture,
    png_bomb,
    png_chunk,
    upright_with_rotating_exif,
    with_chunk,
    with_segment,
)

METHOD = MethodConfig(face_size=128)


@pytest.fixture(scope="module")
def analyzer():
    from raypipe.anonymize.analyzers import build_analyzer

    return build_analyzer("dlib")


@pytest.fixture(scope="module")
def pictures() -> dict[str, object]:
    from skimage import data

    portrait = np.ascontiguousarray(data.astronaut())
    faceless = Image.fromarray(np.ascontiguousarray(data.coffee())).resize((200, 133))
    return {
        "portrait": portrait,
        "person": Image.fromarray(portrait),
        "faceless": faceless,
        "faceless_jpeg": encoded(faceless, "JPEG"),
        "faceless_png": encoded(faceless, "PNG"),
        "face": encoded(Image.fromarray(face_crop(portrait)), "JPEG", quality=85),
    }


def run(tmp_path: Path, analyzer, members: list[tuple[str, bytes]], **limits: int) -> SampleTask:
    """One sample through read, decode and detect."""
    path = tmp_path / "part-00000.tar"
    path.write_bytes(tar_bytes([Sample("k", members)]))
    config = LimitsConfig(**limits)
    tasks = Decode(config)(list(shard_tasks(ShardWork(str(path), path.name), StorageOptions(), config)))
    detect_faces(tasks, analyzer, METHOD, config)
    return tasks[0]


def hidden(p: dict, name: str) -> tuple[str, bytes]:
    face, jpeg, png = p["face"], p["faceless_jpeg"], p["faceless_png"]
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta GImage:Data='" + base64.b64encode(face) + b"'/>"
    return {
        "raw orientation": ("k.jpg", upright_with_rotating_exif(p["portrait"])),
        "MPO second picture": ("k.jpg", multi_picture(p["faceless"], p["person"])),
        "EXIF thumbnail": ("k.jpg", with_segment(jpeg, exif_thumbnail_segment(face))),
        "ICC segment": ("k.jpg", with_segment(jpeg, jpeg_segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + face))),
        "comment segment": ("k.jpg", with_segment(jpeg, jpeg_segment(0xFE, face))),
        "base64 in XMP": ("k.jpg", with_segment(jpeg, jpeg_segment(0xE1, xmp))),
        "private PNG chunk": ("k.png", with_chunk(png, png_chunk(b"prVt", face))),
        "alpha channel": ("k.png", face_in_alpha(p["portrait"])),
    }[name]


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("raw orientation", "k.jpg: 1 face(s) found only when the EXIF orientation (6) is ignored"),
        ("MPO second picture", "k.jpg: 1 face(s) in picture 2 of 2 (MPO), which raypipe cannot anonymize"),
        ("EXIF thumbnail", "k.jpg: 1 face(s) in a picture embedded in APP1 at byte"),
        ("ICC segment", "k.jpg: 1 face(s) in a picture embedded in APP2 at byte"),
        ("comment segment", "k.jpg: 1 face(s) in a picture embedded in COM at byte 6"),
        ("base64 in XMP", "k.jpg: 1 face(s) in a base64 picture embedded in APP1"),
        ("private PNG chunk", "k.png: 1 face(s) in a picture embedded in prVt"),
        ("alpha channel", "k.png: 1 face(s) in the alpha channel, which raypipe cannot anonymize"),
    ],
)
def test_a_face_in_a_picture_raypipe_cannot_anonymize_quarantines_the_sample(
    tmp_path: Path, analyzer, pictures: dict, attack: str, message: str
) -> None:
    task = run(tmp_path, analyzer, [hidden(pictures, attack), ("k.txt", b"caption")])
    assert (task.status.value, task.error_step) == ("quarantined", "detect"), task.error
    assert message in (task.error or "")


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("appended", "k.jpg: a second picture follows the JPEG end marker (EOI) at byte"),
        ("after IEND", "k.png: 10054 bytes follow the PNG end chunk (IEND)"),
        ("ICO", "k.ico: holds a picture in the ICO format (found by its content), which raypipe does not scan"),
        ("TGA named .bin", "k.bin: holds a picture in the TGA format"),
    ],
)
def test_a_member_holding_bytes_no_scanner_sees_fails_its_sample(
    tmp_path: Path, analyzer, pictures: dict, member: str, message: str
) -> None:
    face, person = pictures["face"], pictures["person"]
    members = {
        "appended": ("k.jpg", pictures["faceless_jpeg"] + face),
        "after IEND": ("k.png", pictures["faceless_png"] + face),
        "ICO": ("k.ico", encoded(Image.fromarray(face_crop(pictures["portrait"])), "ICO")),
        "TGA named .bin": ("k.bin", encoded(person, "TGA")),
    }
    task = run(tmp_path, analyzer, [members[member]])
    assert (task.status.value, task.error_step) == ("failed", "scan"), task.error
    assert message in (task.error or "")


@pytest.mark.parametrize(
    ("name", "image_format", "mode"),
    [("k.ppm", "PPM", "RGB"), ("k.bin", "PPM", "L"), ("k.jpeg ", "JPEG", "RGB"), ("k.dat", "JPEG", "RGB")],
)
def test_a_picture_under_any_name_is_scanned(
    tmp_path: Path, analyzer, pictures: dict, name: str, image_format: str, mode: str
) -> None:
    task = run(tmp_path, analyzer, [(name, encoded(pictures["person"].convert(mode), image_format))])
    assert task.pending and [len(w.faces) for w in task.images] == [1]


def test_faces_the_anonymized_output_drops_or_shows_upright_do_not_quarantine(
    tmp_path: Path, analyzer, pictures: dict
) -> None:
    person_jpeg = encoded(pictures["person"], "JPEG")
    for members in (
        [("k.jpg", exif_rotated(pictures["portrait"]))],  # stored sideways: upright face, no face as stored
        [("k.jpg", with_segment(person_jpeg, exif_thumbnail_segment(pictures["face"])))],  # a camera thumbnail
        [("k.jpg", multi_picture(pictures["person"], pictures["person"]))],  # re-encoded from picture 1 alone
    ):
        task = run(tmp_path, analyzer, members)
        assert task.pending and [len(w.faces) for w in task.images] == [1], task.error


def test_a_faceless_image_is_released_as_scanned(tmp_path: Path, analyzer, pictures: dict) -> None:
    webp = encoded(pictures["faceless"], "WEBP") + pictures["face"]
    jpeg = with_segment(pictures["faceless_jpeg"], exif_thumbnail_segment(encoded(pictures["faceless"], "JPEG")))
    members = [("k.jpg", jpeg), ("k.webp", webp), ("k.png", pictures["faceless_png"]), ("k.txt", b"x")]
    task = run(tmp_path, analyzer, members)
    (released,) = Compose(AuditConfig(), analyzer="dlib").ready()([task])
    assert released.status.value == "no_face"
    out = released_members(released)
    assert out["k.jpg"] == jpeg and out["k.png"] == pictures["faceless_png"] and out["k.txt"] == b"x"
    assert out["k.webp"] != webp and pictures["face"] not in out["k.webp"]  # a lossless copy of the scanned picture
    with Image.open(io.BytesIO(out["k.webp"])) as copy, Image.open(io.BytesIO(webp)) as original:
        assert np.array_equal(np.asarray(copy.convert("RGB")), np.asarray(original.convert("RGB")))


def test_the_pixel_budget_of_a_sample_is_checked_before_anything_is_decoded(tmp_path: Path, analyzer) -> None:
    import tracemalloc

    bomb = png_bomb(7000)  # 49 M pixels, each under limits.max_image_pixels; 147 MB as RGB
    members = [(f"k.{i}.png", bomb) for i in range(4)]
    tracemalloc.start()
    try:
        started = time.perf_counter()
        task = run(tmp_path, analyzer, members)
        elapsed, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (task.status.value, task.error_step) == ("failed", "decode")
    assert "k.2.png: the sample's images hold 147000000 pixels up to this one, over the limit of 100000000" in (
        task.error or ""
    )
    assert "(limits.max_sample_pixels)" in (task.error or "")
    assert elapsed < 2 and peak < 20_000_000, (elapsed, peak)  # nothing was decompressed
