"""Image bytes <-> RGB arrays, with limits, for the CLI and the job's decode/detect/compose stages.

What raypipe treats as an image: a member whose extension names an image format, and any member whose
bytes one of Pillow's plugins recognises as a picture, whatever its name (:func:`identify_image`).
Only the formats in ``SCANNED_FORMATS`` are decoded (Pillow would otherwise parse untrusted bytes with
every plugin it has, some of which call out to external programs); a picture in any other format is
refused (:class:`UnscannableImageError`), never released unseen.

``no_face`` is a claim about every byte released, so decoding also accounts for the bytes around the
picture (:func:`inspect_image`):

- JPEG and PNG are released byte for byte when faceless, so their structure is walked to the end
  marker (:mod:`raypipe.imagefiles`): data after it is refused; the further pictures of an MPO are
  scanned; every JPEG or PNG embedded in metadata (EXIF thumbnails, pictures in XMP, ICC or comment
  segments, PNG text chunks) is found by its signature and scanned.
- Other formats (GIF, WebP, BMP, TIFF, PPM/PGM/PBM) are released as a lossless re-encoding of the
  pixels that were scanned (``DecodedImage.release``), so nothing else in them leaves.
- Animated and multi-page images other than MPO are refused: only one picture could be anonymized.
- When the EXIF orientation rotates, the picture is scanned upright and as stored, because readers that
  ignore the orientation show the stored pixels (:func:`stored_orientation`, :func:`upright_box`).

Decoding refuses images beyond the pixel limit before decompressing them (decompression bombs). 16-bit
images are scaled to 8 bits, palette/grayscale/CMYK are converted to RGB, and alpha is dropped without
compositing, so a face hidden under transparent pixels is still seen. Encoding writes the format the
member's name (or content) names; anonymized images are written without metadata (EXIF can hold GPS
positions, names, serials).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from raypipe.imagefiles import LayoutError, Span, embedded_candidates, jpeg_layout, png_layout

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_EXTENSIONS = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "jpe": "JPEG",
    "jfif": "JPEG",
    "png": "PNG",
    "apng": "PNG",
    "webp": "WEBP",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "gif": "GIF",
    "ppm": "PPM",
    "pgm": "PPM",
    "pbm": "PPM",
    "pnm": "PPM",
}
# Pillow plugins that may parse a member's pixels. (JPEGs with several pictures, MPO, come through the
# JPEG plugin.)
DECODE_FORMATS = tuple(sorted(set(IMAGE_EXTENSIONS.values())))
SCANNED_FORMATS = frozenset({*DECODE_FORMATS, "MPO"})
# Released byte for byte when faceless: their every byte is accounted for (see the module docstring).
BYTE_EXACT_FORMATS = frozenset({"JPEG", "MPO", "PNG"})
# Recognised by their magic bytes alone, never opened: EPS runs Ghostscript, PSD parses large layer
# structures. They are refused like any format raypipe does not scan.
_MAGIC_ONLY_FORMATS = ("EPS", "PSD")
# Pillow plugins that recognise files that are not pictures (data containers, video): not images here.
_NOT_PICTURES = frozenset({"BUFR", "GRIB", "HDF5", "MPEG"})
# Pictures embedded in metadata are JPEG or PNG (EXIF thumbnails, XMP, ICC and comment payloads).
_EMBEDDED_FORMATS = ("JPEG", "PNG")
_HEADER_PREFIX_BYTES = 16 * 1024
MAX_PICTURES_PER_IMAGE = 64  # pictures besides the main one (MPO frames, embedded): beyond, refused
DEFAULT_MAX_PIXELS = 50_000_000
ORIENTATION_TAG = 0x0112
# How Pillow turns each EXIF orientation upright (ImageOps.exif_transpose), by Transpose name.
_UPRIGHT_METHOD = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}
_INVERSE_METHOD = {"ROTATE_270": "ROTATE_90", "ROTATE_90": "ROTATE_270"}  # the others undo themselves


class ImageDecodeError(ValueError):
    """The bytes are not an image raypipe can process; the message says why."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the limit allows (found from its header, before decoding)."""


class UnscannableImageError(ImageDecodeError):
    """The member holds a picture, or bytes beside its picture, that raypipe cannot scan for faces."""


@dataclass(frozen=True)
class Picture:
    """A picture inside an image member besides its main one: an MPO's further picture, or a JPEG/PNG
    embedded in metadata. Bytes ``start:end`` of the member hold it (as base64 text if ``base64``);
    it is decoded only when scanned (:func:`decode_picture`), so its pixels never travel."""

    label: str  # for messages: "picture 2 of 3 (MPO)", "a picture embedded in APP1 at byte 24"
    start: int
    end: int
    pixels: int
    base64: bool = False
    alpha: bool = False  # the main picture's alpha channel, seen as a grayscale picture


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` finds without decoding pixels."""

    format: str  # Pillow's name for the content (``MPO`` for a multi-picture JPEG)
    width: int
    height: int
    pictures: tuple[Picture, ...] = ()

    @property
    def pixels(self) -> int:
        """Pixels of the main picture and of every other picture the member holds."""
        return self.width * self.height + sum(p.pixels for p in self.pictures)


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, upright
    format: str = ""
    orientation: int = 1  # the EXIF orientation that was applied (1: the pixels are stored upright)
    pictures: tuple[Picture, ...] = ()  # further pictures of the member, to scan too
    release: bytes | None = None  # bytes to release instead of the member's own when nothing changes


def image_format_for(member_name: str) -> str | None:
    """The PIL format for a member/file name by its last extension, or None if it is not an image."""
    ext = member_name.rsplit(".", 1)[-1].lower() if "." in member_name else ""
    return IMAGE_EXTENSIONS.get(ext)


def encodable_format(image_format: str) -> str:
    """The format an image of content ``image_format`` is written back in (an MPO as a plain JPEG)."""
    return "JPEG" if image_format == "MPO" else image_format


def identify_image(data: bytes) -> str | None:
    """The Pillow format name of a picture in ``data`` by its content, whatever the member's name, or None.

    Every plugin Pillow has is asked, in Pillow's own order, with its magic-byte test first; a plugin
    that claims the bytes must also parse their header (which rules out text that happens to start like
    an image). Plugins that would run external programs or parse large structures are only asked for
    their magic bytes. Nothing is decoded.
    """
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        if name in _NOT_PICTURES or name not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[name]
        if accept is not None and not _accepts(accept, prefix):
            continue
        if name in _MAGIC_ONLY_FORMATS:
            return name
        # Plugins without a magic test try their header parser on every member; their headers are
        # short, so they get only the start (one of them walks text line by line).
        format_name = _parses_as(factory, data if accept is not None else data[:_HEADER_PREFIX_BYTES])
        if format_name is not None:
            return format_name
    return _format_pillow_does_not_read(data[:_HEADER_PREFIX_BYTES])


# Picture formats Pillow has no plugin for, by their own magic: phone photos (HEIF/HEIC), JPEG XL, SVG.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_JPEG_XL = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")
_SVG_ROOT = re.compile(
    rb"(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*(?:<!DOCTYPE\s+svg[^>]*>\s*)?<svg[\s>]",
    re.DOTALL | re.IGNORECASE,
)


def _format_pillow_does_not_read(head: bytes) -> str | None:
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    if head.startswith(_JPEG_XL):
        return "JPEG XL"
    if _SVG_ROOT.match(head):
        return "SVG"
    return None


def _accepts(accept: Any, prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))
    except Exception:  # some magic tests index past a short prefix: not that format
        return False


def _parses_as(factory: Any, data: bytes) -> str | None:
    try:
        with factory(io.BytesIO(data), "") as image:
            return str(image.format)
    except MemoryError:
        raise
    except Exception:  # the plugin's header parser rejects the bytes: not this format
        return None


@contextmanager
def _untrusted() -> Iterator[None]:
    """Whatever a decoder raises on untrusted bytes (UnidentifiedImageError, OSError, SyntaxError, struct
    errors in EXIF parsing, ...) says the image is unusable, not that the machine is broken."""
    from PIL import Image

    try:
        yield
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, beyond ~179 M pixels
        raise ImageTooLargeError(f"image is over the pixel limit: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"not a decodable image: {type(exc).__name__}: {exc}") from exc


def _open(data: bytes, formats: tuple[str, ...] = DECODE_FORMATS) -> PILImage.Image:
    from PIL import Image

    return Image.open(io.BytesIO(data), formats=formats)


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check an image without decoding its pixels: size limits, frames, and every byte around the picture.

    Raises :class:`ImageTooLargeError`, :class:`UnscannableImageError` (data after the end marker,
    undeclared pictures, animation data) or :class:`ImageDecodeError`.
    """
    with _untrusted(), _open(data) as img:
        return _inspect(img, data, max_pixels)


def _inspect(img: PILImage.Image, data: bytes, max_pixels: int) -> ImageInfo:
    width, height = img.size
    _check_size(f"image is {width}x{height}", width, height, max_pixels)
    image_format = str(img.format)
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1 and image_format != "MPO":
        raise ImageDecodeError(
            f"{image_format} with {frames} frames (animated or multi-page): only still images are"
            " processed, so not every frame could be anonymized"
        )
    pictures: list[Picture] = []
    if image_format in BYTE_EXACT_FORMATS:
        pictures = _other_pictures(data, image_format, frames, max_pixels)
    if img.has_transparency_data:
        # Viewers composite alpha: a face drawn in the alpha channel of a blank picture is visible to
        # them, though not in the colour channels the main scan sees.
        pictures.append(Picture("the alpha channel", 0, len(data), width * height, alpha=True))
    return ImageInfo(image_format, width, height, tuple(pictures))


def _check_size(what: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{what} = {width * height} pixels, over the limit of {max_pixels}")
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{what}: no pixels")


def _other_pictures(data: bytes, image_format: str, frames: int, max_pixels: int) -> list[Picture]:
    """Every picture of a JPEG/PNG besides the main one; refuses bytes that belong to no structure."""
    try:
        layout = png_layout(data) if image_format == "PNG" else jpeg_layout(data)
    except LayoutError as exc:
        raise UnscannableImageError(f"{exc}: bytes raypipe cannot account for") from exc
    kind = "PNG end chunk (IEND)" if image_format == "PNG" else "JPEG end marker (EOI)"
    streams = layout.streams
    if image_format != "MPO" and len(streams) > 1:
        raise UnscannableImageError(f"a second picture follows the {kind} at byte {streams[1][0]}")
    if layout.trailing:
        raise UnscannableImageError(
            f"{layout.trailing} bytes follow the {kind}: data no scanner saw (another picture or a video"
            " could hide there)"
        )
    if image_format == "MPO" and len(streams) != frames:
        raise UnscannableImageError(f"MPO whose index lists {frames} pictures holds {len(streams)}")
    if layout.animation:
        raise UnscannableImageError("PNG with animation frame data (fdAT) beyond the picture that is shown")
    _refuse_raw_thumbnails(data, layout.metadata)
    pictures = [
        _picture(data[start:end], f"picture {number} of {frames} (MPO)", start, end, max_pixels)
        for number, (start, end) in enumerate(streams[1:], start=2)
    ]
    for spot in embedded_candidates(data, layout.metadata):
        label = f"a {'base64 ' if spot.base64 else ''}picture embedded in {spot.where} at byte {spot.start}"
        blob = _embedded_bytes(data, spot.start, spot.end, spot.base64)
        found = _embedded_picture(blob, label, spot.start, spot.end, spot.base64, max_pixels)
        if found is not None:
            pictures.append(found)
        if len(pictures) > MAX_PICTURES_PER_IMAGE:
            raise UnscannableImageError(f"more than {MAX_PICTURES_PER_IMAGE} pictures in one image")
    return pictures


def _open_picture(blob: bytes) -> PILImage.Image:
    # An MPO's further picture carries the MPO index of the file it was cut from: Pillow warns that the
    # index does not fit and reads it as the plain JPEG it is.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _open(blob, _EMBEDDED_FORMATS)


def _refuse_raw_thumbnails(data: bytes, metadata: list[Span]) -> None:
    """Thumbnails stored as raw pixels (a JFIF/JFXX thumbnail, an EXIF thumbnail in TIFF strips) have no
    signature to find them by; they are rare, so such an image is refused rather than scanned."""
    for span in metadata:
        payload = data[span.start : span.end]
        if span.where == "APP0" and _jfif_raw_thumbnail(payload):
            raise UnscannableImageError(
                f"a raw-pixel JFIF thumbnail in APP0 at byte {span.start}, which is not scanned"
            )
        is_exif = (span.where == "APP1" and payload.startswith(b"Exif\x00\x00")) or span.where == "eXIf"
        if is_exif and _exif_strip_thumbnail(payload):
            raise UnscannableImageError(
                f"an uncompressed EXIF thumbnail (TIFF strips) in {span.where} at byte {span.start}, which is"
                " not scanned"
            )


def _jfif_raw_thumbnail(payload: bytes) -> bool:
    if payload.startswith(b"JFIF\x00") and len(payload) >= 14:
        return payload[12] * payload[13] > 0  # thumbnail width x height, RGB pixels follow
    return payload.startswith(b"JFXX\x00") and payload[5:6] in (b"\x11", b"\x13")  # palette / RGB thumbnail


def _exif_strip_thumbnail(payload: bytes) -> bool:
    from PIL import ExifTags, Image

    exif = Image.Exif()
    try:
        exif.load(payload)
        thumbnail = exif.get_ifd(ExifTags.IFD.IFD1)
    except Exception:  # EXIF Pillow cannot parse: no thumbnail it could point to
        return False
    return 0x0111 in thumbnail  # StripOffsets: pixels in strips rather than an embedded JPEG


def _picture(blob: bytes, label: str, start: int, end: int, max_pixels: int, encoded: bool = False) -> Picture:
    with _untrusted(), _open_picture(blob) as img:
        width, height = img.size
    _check_size(f"{label} is {width}x{height}", width, height, max_pixels)
    return Picture(label, start, end, width * height, encoded)


def _embedded_picture(blob: bytes, label: str, start: int, end: int, encoded: bool, max_pixels: int) -> Picture | None:
    """The picture that starts at a signature in the metadata, or None where the bytes after the
    signature are no picture header at all (a viewer could not show them either)."""
    try:
        return _picture(blob, label, start, end, max_pixels, encoded)
    except ImageTooLargeError:
        raise
    except ImageDecodeError:
        return None


def _embedded_bytes(data: bytes, start: int, end: int, encoded: bool) -> bytes:
    if not encoded:
        return data[start:end]
    text = re.sub(rb"[^A-Za-z0-9+/]", b"", data[start:end])  # line breaks and padding
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):  # a length no base64 text has: no picture
        return b""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode to upright RGB uint8, after :func:`inspect_image`'s checks. Raises :class:`ImageDecodeError`
    (or a subclass) naming the problem."""
    from PIL import ImageOps

    with _untrusted(), _open(data) as img:
        info = _inspect(img, data, max_pixels)
        img.seek(0)
        orientation = _orientation(img)
        upright = ImageOps.exif_transpose(img)
        rgb = _to_rgb(upright)
        release = None if info.format in BYTE_EXACT_FORMATS else _lossless_copy(upright, info.format, rgb)
    return DecodedImage(rgb=rgb, format=info.format, orientation=orientation, pictures=info.pictures, release=release)


def decode_picture(data: bytes, picture: Picture, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    """The pixels of a further picture of ``data``, as RGB: upright, and as stored if its EXIF orientation
    rotates it (readers that ignore the orientation show those)."""
    from PIL import ImageOps

    if picture.alpha:
        return _alpha_views(data)
    blob = _embedded_bytes(data, picture.start, picture.end, picture.base64)
    with _untrusted(), _open_picture(blob) as img:
        _check_size(f"{picture.label} is {img.size[0]}x{img.size[1]}", *img.size, max_pixels)
        orientation = _orientation(img)
        views = [_to_rgb(ImageOps.exif_transpose(img))]
        if orientation != 1:
            views.append(_to_rgb(img))
    return views


def _alpha_views(data: bytes) -> list[np.ndarray]:
    """The alpha channel as RGB, upright and as stored; none when it is uniform (it shows nothing)."""
    with _untrusted(), _open(data) as img:
        img.seek(0)
        orientation = _orientation(img)
        stored = np.asarray(img.convert("RGBA").getchannel("A"))
    if stored.min() == stored.max():
        return []
    gray = np.ascontiguousarray(np.repeat(stored[:, :, None], 3, axis=2))
    if orientation == 1:
        return [gray]
    return [_transposed(gray, _UPRIGHT_METHOD[orientation]), gray]


def _transposed(rgb: np.ndarray, method: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).transpose(Image.Transpose[method]))


def _orientation(img: PILImage.Image) -> int:
    """The EXIF orientation Pillow applies when it turns the picture upright (1 when it applies none)."""
    value = img.getexif().get(ORIENTATION_TAG, 1)
    return value if value in _UPRIGHT_METHOD else 1


def stored_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels as stored in the file, from the upright pixels ``rgb`` and the EXIF orientation that
    made them upright: what a reader that ignores the orientation shows."""
    method = _UPRIGHT_METHOD.get(orientation)
    if method is None:
        return rgb
    return _transposed(rgb, _INVERSE_METHOD.get(method, method))


def upright_box(
    box: tuple[float, float, float, float], orientation: int, stored_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Where a box found in the stored pixels (``stored_size`` = width, height) lies in the upright ones."""
    width, height = stored_size
    method = _UPRIGHT_METHOD.get(orientation)
    maps = {
        "FLIP_LEFT_RIGHT": lambda x, y: (width - x, y),
        "ROTATE_180": lambda x, y: (width - x, height - y),
        "FLIP_TOP_BOTTOM": lambda x, y: (x, height - y),
        "TRANSPOSE": lambda x, y: (y, x),
        "ROTATE_270": lambda x, y: (height - y, x),
        "TRANSVERSE": lambda x, y: (height - y, width - x),
        "ROTATE_90": lambda x, y: (y, width - x),
    }
    if method is None:
        return box
    (ax, ay), (bx, by) = maps[method](box[0], box[1]), maps[method](box[2], box[3])
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def _to_rgb(img: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.ascontiguousarray(np.repeat(_gray_to_8_bits(img)[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _gray_to_8_bits(img: PILImage.Image) -> np.ndarray:
    """16-bit, 32-bit and float grayscale as 8 bits, scaled rather than clipped (PIL would clip everything
    above 255 to white, and float pictures, 0..1 in PFM and TIFF, to black: a face there would be unseen)."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if img.mode == "F" or arr.max() > 65535 or arr.min() < 0:
        low, high = float(arr.min()), float(arr.max())
        scaled = (arr - low) / (high - low) * 255.0 if high > low else np.zeros_like(arr)
    else:
        scaled = arr / (65535.0 if arr.max() > 255 else 255.0) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# Lossless settings for the formats that are released re-encoded.
_LOSSLESS_OPTIONS: dict[str, dict[str, object]] = {
    "WEBP": {"lossless": True, "exact": True, "quality": 100},
    "TIFF": {"compression": "tiff_lzw"},
}


def _lossless_copy(upright: PILImage.Image, image_format: str, rgb: np.ndarray) -> bytes:
    """The scanned picture alone, re-encoded in its own format without metadata, checked to decode to
    exactly the pixels that were scanned (tried in the picture's own mode first, then as RGB)."""
    from PIL import Image

    own = upright.copy()
    # Nothing of the original rides along (comments, EXIF, XMP): only what the pixels need.
    own.info = {k: v for k, v in upright.info.items() if k == "transparency"}
    for candidate in (own, Image.fromarray(rgb)):
        buffer = io.BytesIO()
        try:
            candidate.save(buffer, format=image_format, **_LOSSLESS_OPTIONS.get(image_format, {}))
        except (OSError, ValueError, KeyError, TypeError):  # a mode this format cannot write
            continue
        with _open(buffer.getvalue(), (image_format,)) as again:
            if np.array_equal(_to_rgb(again), rgb):
                return buffer.getvalue()
    raise UnscannableImageError(
        f"{image_format} image in mode {upright.mode} cannot be re-encoded without loss, so it cannot be"
        " released without the bytes around its picture"
    )


JPEG_FALLBACK_QUALITY = 95  # "match" for a source whose own tables cannot be read (not a JPEG)
_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def jpeg_options(source: bytes | None, quality: int | str = "match") -> dict[str, Any]:
    """Encoder settings for an anonymized JPEG whose input was ``source``.

    ``"match"``: the source's own quantization tables and chroma subsampling, so the output has the
    input's quality and about its size (a fixed quality 95 at 4:4:4 made typical web JPEGs 1.7-2.2x
    larger). A number: that quality, with the source's subsampling. A source that is not a readable JPEG
    gets quality 95 (or the number) at 4:4:4.
    """
    from PIL import JpegImagePlugin

    tables: list[Any] | None = None
    subsampling = 0
    if source is not None:
        try:
            with _open(source, ("JPEG", "MPO")) as img:
                found = dict(getattr(img, "quantization", None) or {})
                if found:
                    luma = found[min(found)]
                    tables = [luma, found.get(1, luma)]  # luma and chroma; a grey source has one table
                sampling = JpegImagePlugin.get_sampling(img)
                subsampling = sampling if sampling in _SUBSAMPLING_NAMES else 0
        except (OSError, ValueError, KeyError, TypeError):  # not a JPEG: its own settings do not exist
            tables = None
    if quality == "match":
        if tables is not None:
            return {"qtables": tables, "subsampling": subsampling}
        return {"quality": JPEG_FALLBACK_QUALITY, "subsampling": subsampling}
    return {"quality": int(quality), "subsampling": subsampling}


def encode_image(
    rgb: np.ndarray, image_format: str, source: bytes | None = None, jpeg_quality: int | str = "match"
) -> bytes:
    """Encode RGB uint8 as ``image_format`` (PIL name), without metadata. A JPEG is written with the
    settings of :func:`jpeg_options` for its input ``source``."""
    from PIL import Image

    options: dict[str, object] = {}
    if image_format == "JPEG":
        options = jpeg_options(source, jpeg_quality)
    elif image_format == "WEBP":
        options = {"lossless": True}
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=encodable_format(image_format), **options)
    return buffer.getvalue()
