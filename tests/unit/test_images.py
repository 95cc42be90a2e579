"""Decoding untrusted image bytes: every kind of image gives upright RGB or a named refusal."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from raypipe.images import ImageDecodeError, ImageTooLargeError, decode_image, encode_image, image_format_for


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def gradient(width: int = 48, height: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5 % 256, y * 7 % 256, (x + y) % 256], axis=2).astype(np.uint8)


def png_bomb(side: int) -> bytes:
    """A real PNG of side x side black grayscale pixels: a few hundred kB that inflate to side**2 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = png_bomb(8000)  # 64 M pixels
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLargeError, match="8000x8000 = 64000000 pixels, over the limit of 50000000"):
        decode_image(bomb)


def test_pillows_own_bomb_guard_is_reported_as_too_large() -> None:
    header = Image.new("L", (1, 1))
    data = bytearray(encoded(header, "PNG"))
    data[16:24] = struct.pack(">II", 20000, 20000)  # 400 M pixels claimed in IHDR
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(ImageTooLargeError):
        decode_image(bytes(data), max_pixels=10**9)


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"), ("LA", "PNG"), ("RGB", "WEBP")],
)
def test_every_colour_mode_becomes_rgb(mode: str, image_format: str) -> None:
    image = Image.fromarray(gradient()).convert(mode)
    decoded = decode_image(encoded(image, image_format))
    assert decoded.rgb.shape == (32, 48, 3) and decoded.rgb.dtype == np.uint8


def test_sixteen_bit_images_are_scaled_not_clipped() -> None:
    values = (np.arange(64 * 16, dtype=np.uint16).reshape(16, 64) * 64).astype(np.uint16)
    decoded = decode_image(encoded(Image.fromarray(values), "PNG"))
    assert decoded.rgb.shape == (16, 64, 3)
    assert decoded.rgb.max() > 200 and decoded.rgb.min() == 0 and len(np.unique(decoded.rgb)) > 100


def test_alpha_is_dropped_without_hiding_what_is_under_it() -> None:
    rgba = np.dstack([gradient(), np.zeros((32, 48), np.uint8)])  # fully transparent
    decoded = decode_image(encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert np.array_equal(decoded.rgb, gradient())


def test_exif_orientation_is_applied() -> None:
    upright = gradient()
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as a sideways camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_image(encoded(stored, "PNG", exif=exif))
    assert np.array_equal(decoded.rgb, upright)


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "PNG"])
def test_animated_images_are_refused(image_format: str) -> None:
    frames = [Image.fromarray(gradient()), Image.fromarray(255 - gradient())]
    data = encoded(frames[0], image_format, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageDecodeError, match="with 2 frames"):
        decode_image(data)


def test_text_with_an_image_name_is_not_an_image() -> None:
    with pytest.raises(ImageDecodeError, match="not a decodable image: UnidentifiedImageError: cannot identify"):
        decode_image(b"this is not a jpeg")
    with pytest.raises(ImageDecodeError, match="not a decodable image: UnidentifiedImageError"):
        decode_image(b"")


def test_formats_outside_the_list_are_never_parsed() -> None:
    # Pillow would open this as EPS (and run Ghostscript to load it) if every plugin were allowed.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"
    with pytest.raises(ImageDecodeError, match="UnidentifiedImageError"):
        decode_image(eps)


def test_multi_picture_jpegs_from_cameras_decode_as_their_first_picture() -> None:
    first, second = Image.fromarray(gradient()), Image.fromarray(255 - gradient())
    data = encoded(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert decode_image(data).rgb.shape == (32, 48, 3)


def test_a_one_pixel_image_decodes() -> None:
    decoded = decode_image(encoded(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"))
    assert decoded.rgb.tolist() == [[[9, 8, 7]]]


def test_gif_members_are_images_so_their_faces_are_not_copied_unseen() -> None:
    assert image_format_for("k.gif") == "GIF"
    assert decode_image(encode_image(gradient(), "GIF")).rgb.shape == (32, 48, 3)
