"""Decoding untrusted image bytes: every kind of image gives upright RGB or a named refusal."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from raypipe.config import ConfigError, build_config
from raypipe.images import (
    ImageDecodeError,
    ImageTooLargeError,
    UnscannableImageError,
    decode_image,
    decode_picture,
    encode_image,
    identify_image,
    image_format_for,
    inspect_image,
    jpeg_options,
    stored_orientation,
    upright_box,
)
from tests.integration.hostile import (
    exif_thumbnail_segment,
    jpeg_segment,
    multi_picture,
    png_chunk,
    with_chunk,
    with_segment,
)


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


@pytest.mark.parametrize("image_format", ["PPM", "TIFF"])
def test_float_images_are_scaled_not_clipped_to_black(image_format: str) -> None:
    values = (np.arange(64 * 16, dtype=np.float32).reshape(16, 64) / 1024).astype(np.float32)  # 0..1
    decoded = decode_image(encoded(Image.fromarray(values, "F"), image_format))  # PFM / float TIFF
    assert decoded.rgb.min() == 0 and decoded.rgb.max() == 255 and len(np.unique(decoded.rgb)) > 200


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


def test_multi_picture_jpegs_from_cameras_decode_as_their_first_picture_and_list_the_others() -> None:
    first, second = Image.fromarray(gradient()), Image.fromarray(255 - gradient())
    data = multi_picture(first, second)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode_image(data)
    assert decoded.rgb.shape == (32, 48, 3) and decoded.release is None  # released byte for byte if faceless
    (picture,) = decoded.pictures
    assert picture.label == "picture 2 of 2 (MPO)" and picture.pixels == 32 * 48
    (view,) = decode_picture(data, picture)
    assert np.abs(view.astype(int) - (255 - gradient()).astype(int)).mean() < 8


def test_a_one_pixel_image_decodes() -> None:
    decoded = decode_image(encoded(Image.new("RGB", (1, 1), (9, 8, 7)), "PNG"))
    assert decoded.rgb.tolist() == [[[9, 8, 7]]]


def test_gif_members_are_images_so_their_faces_are_not_copied_unseen() -> None:
    assert image_format_for("k.gif") == "GIF"
    assert decode_image(encode_image(gradient(), "GIF")).rgb.shape == (32, 48, 3)


# --- what counts as an image: the content, whatever the name -------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "mode", "found"),
    [
        ("PPM", "RGB", "PPM"),
        ("PPM", "L", "PPM"),  # PGM
        ("ICO", "RGB", "ICO"),
        ("TGA", "RGB", "TGA"),
        ("QOI", "RGB", "QOI"),
        ("PCX", "RGB", "PCX"),
        ("SGI", "RGB", "SGI"),
        ("JPEG2000", "RGB", "JPEG2000"),
        ("WEBP", "RGB", "WEBP"),
        ("TIFF", "RGB", "TIFF"),
    ],
)
def test_pictures_are_recognised_by_their_content(image_format: str, mode: str, found: str) -> None:
    assert identify_image(encoded(Image.fromarray(gradient()).convert(mode), image_format)) == found


def test_formats_raypipe_never_opens_are_recognised_by_their_magic_alone() -> None:
    assert identify_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n") == "EPS"
    assert identify_image(b"8BPS\x00\x01" + bytes(40)) == "PSD"


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIF"),
        (b"\xff\x0a\xfa\x7f", "JPEG XL"),
        (b'<?xml version="1.0"?>\n<!-- drawn -->\n<svg xmlns="http://www.w3.org/2000/svg">', "SVG"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),  # an MP4 video: not a picture
        (b"<html><body><svg></svg></body></html>", None),
    ],
)
def test_picture_formats_pillow_cannot_read_are_recognised_too(data: bytes, found: str | None) -> None:
    assert identify_image(data) == found


@pytest.mark.parametrize(
    "data",
    [b"", b"1", b'{"caption": "BMW is a car"}', b"P1 is the first line", b"hello world\n" * 500, bytes(4096)],
)
def test_text_and_data_are_not_pictures(data: bytes) -> None:
    import pickle

    assert identify_image(data) is None
    assert identify_image(pickle.dumps({"a": [1, 2, 3]})) is None


def test_netpbm_members_are_images_by_name_too() -> None:
    assert {image_format_for(f"k.{ext}") for ext in ("ppm", "pgm", "pbm", "pnm", "JPG", "jfif")} == {"PPM", "JPEG"}


# --- bytes around the picture --------------------------------------------------------------------------


def jpeg() -> bytes:
    return encoded(Image.fromarray(gradient()), "JPEG")


def png() -> bytes:
    return encoded(Image.fromarray(gradient()), "PNG")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (jpeg() + jpeg(), "a second picture follows the JPEG end marker (EOI) at byte"),
        (jpeg() + b"ftypmp4 a motion photo's video", "30 bytes follow the JPEG end marker (EOI)"),
        (jpeg()[:-2], "before the end marker (EOI)"),
        (png() + jpeg(), "bytes follow the PNG end chunk (IEND)"),
        (png() + png_chunk(b"IDAT", b"x" * 100), "112 bytes follow the PNG end chunk (IEND)"),
        (with_chunk(png(), png_chunk(b"fdAT", b"\x00" * 8)), "animation frame data (fdAT)"),
    ],
)
def test_bytes_no_scanner_saw_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(UnscannableImageError, match=re.escape(message)):
        inspect_image(data)


def test_thumbnails_stored_as_raw_pixels_are_refused() -> None:
    jfif = jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x02\x02" + bytes(12))
    with pytest.raises(UnscannableImageError, match="raw-pixel JFIF thumbnail in APP0"):
        inspect_image(with_segment(jpeg(), jfif))
    strips = struct.pack("<HHIHH", 0x0103, 3, 1, 1, 0) + struct.pack("<HHII", 0x0111, 4, 1, 100)
    tiff = b"II*\x00" + struct.pack("<IHI", 8, 0, 14) + struct.pack("<H", 2) + strips + struct.pack("<I", 0)
    with pytest.raises(UnscannableImageError, match=r"uncompressed EXIF thumbnail \(TIFF strips\) in APP1"):
        inspect_image(with_segment(jpeg(), jpeg_segment(0xE1, b"Exif\x00\x00" + tiff + bytes(200))))


def test_zero_padding_after_the_end_marker_is_accepted() -> None:
    assert inspect_image(jpeg() + bytes(300)).pictures == ()
    assert inspect_image(png() + bytes(7)).pictures == ()


def test_an_mpo_holding_more_pictures_than_its_index_is_refused() -> None:
    data = multi_picture(Image.fromarray(gradient()), Image.fromarray(255 - gradient())) + jpeg()
    with pytest.raises(UnscannableImageError, match="MPO whose index lists 2 pictures holds 3"):
        inspect_image(data)


def test_pictures_embedded_in_metadata_are_found() -> None:
    import base64

    thumb = encoded(Image.fromarray(255 - gradient()), "JPEG")
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x GImage:Data='" + base64.b64encode(thumb) + b"'/>"
    data = with_segment(with_segment(jpeg(), jpeg_segment(0xE1, xmp)), exif_thumbnail_segment(thumb))
    info = inspect_image(data)
    assert [p.label.split(" at byte")[0] for p in info.pictures] == [
        "a picture embedded in APP1",
        "a base64 picture embedded in APP1",
    ]
    assert info.pixels == 3 * 32 * 48
    for picture in info.pictures:
        (view,) = decode_picture(data, picture)
        assert view.shape == (32, 48, 3) and view.mean() > 100  # the inverted gradient, not the main one
    in_png = with_chunk(png(), png_chunk(b"tEXt", b"Comment\x00" + thumb))
    assert [p.label.split(" at byte")[0] for p in inspect_image(in_png).pictures] == ["a picture embedded in tEXt"]


def test_signatures_that_start_no_picture_are_only_metadata() -> None:
    data = with_segment(jpeg(), jpeg_segment(0xE2, b"ICC_PROFILE\x00\xff\xd8\xff\xe0 random bytes"))
    assert inspect_image(data).pictures == ()


def test_an_embedded_picture_over_the_pixel_limit_refuses_the_image() -> None:
    big = encoded(Image.new("L", (300, 300)), "JPEG")
    with pytest.raises(ImageTooLargeError, match="picture embedded in COM at byte 6 is 300x300 = 90000 pixels"):
        inspect_image(with_segment(encoded(Image.new("L", (10, 10)), "JPEG"), jpeg_segment(0xFE, big)), 50_000)


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [("GIF", "P"), ("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "I;16"), ("PPM", "L"), ("WEBP", "RGBA")],
)
def test_formats_not_checked_byte_by_byte_are_released_as_a_lossless_copy_of_what_was_scanned(
    image_format: str, mode: str
) -> None:
    image = Image.fromarray(gradient()).convert(mode if mode != "I;16" else "I").convert(mode)
    data = encoded(image, image_format) + b"\xff\xd8\xff hidden bytes after the picture"
    decoded = decode_image(data)
    assert decoded.release is not None and b"hidden bytes" not in decoded.release
    assert np.array_equal(decode_image(decoded.release).rgb, decoded.rgb)


def test_jpeg_and_png_are_released_as_they_are() -> None:
    assert decode_image(jpeg()).release is None and decode_image(png()).release is None


# --- orientation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_stored_pixels_and_boxes_follow_each_exif_orientation(orientation: int) -> None:
    from PIL import ImageOps

    stored = np.zeros((30, 50, 3), np.uint8)
    stored[4:10, 30:45] = 255  # a "face" at x 30..45, y 4..10 as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    with Image.open(io.BytesIO(encoded(Image.fromarray(stored), "PNG", exif=exif))) as image:
        upright = np.asarray(ImageOps.exif_transpose(image))
    decoded = decode_image(encoded(Image.fromarray(stored), "PNG", exif=exif))
    assert decoded.orientation == orientation and np.array_equal(decoded.rgb, upright)
    assert np.array_equal(stored_orientation(decoded.rgb, orientation), stored)
    ys, xs = np.nonzero(upright[:, :, 0])
    assert upright_box((30, 4, 45, 10), orientation, (50, 30)) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def _photo_jpeg(quality: int, subsampling: int, grey: bool = False) -> bytes:
    from PIL import Image
    from skimage import data

    image = Image.fromarray(np.ascontiguousarray(data.astronaut()))
    if grey:
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def _tables_and_sampling(data: bytes) -> tuple[dict[int, list[int]], int]:
    from PIL import Image, JpegImagePlugin

    with Image.open(io.BytesIO(data)) as img:
        return {k: list(v) for k, v in img.quantization.items()}, JpegImagePlugin.get_sampling(img)


def test_an_anonymized_jpeg_keeps_its_inputs_tables_subsampling_and_size() -> None:
    source = _photo_jpeg(75, 2)  # a typical web JPEG: quality 75, 4:2:0
    rgb = decode_image(source).rgb
    matched = encode_image(rgb, "JPEG", source=source)
    assert _tables_and_sampling(matched) == _tables_and_sampling(source)
    assert len(matched) < 1.15 * len(source)
    assert len(encode_image(rgb, "JPEG", source=source, jpeg_quality=95)) > 1.5 * len(source)  # what a fixed 95 costs


def test_a_jpeg_quality_number_keeps_the_inputs_subsampling() -> None:
    source = _photo_jpeg(90, 1)  # 4:2:2
    encoded = encode_image(decode_image(source).rgb, "JPEG", source=source, jpeg_quality=60)
    tables, sampling = _tables_and_sampling(encoded)
    assert sampling == 1 and tables != _tables_and_sampling(source)[0]


def test_a_grey_or_non_jpeg_source_gets_a_sane_jpeg() -> None:
    grey = _photo_jpeg(80, 0, grey=True)
    out = encode_image(decode_image(grey).rgb, "JPEG", source=grey)  # one table in, luma and chroma out
    tables, _ = _tables_and_sampling(out)
    assert tables[0] == _tables_and_sampling(grey)[0][0] == tables[1]
    png = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png, format="PNG")
    assert jpeg_options(png.getvalue()) == {"quality": 95, "subsampling": 0}
    assert jpeg_options(None, 70) == {"quality": 70, "subsampling": 0}


@pytest.mark.parametrize("bad", [0, 101, "high", True, 9.5])
def test_a_bad_jpeg_quality_is_named(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"encode\.jpeg_quality"):
        build_config({"input": "a.tar", "output": "out", "encode": {"jpeg_quality": bad}}, {})
