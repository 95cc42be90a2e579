"""Image bytes <-> RGB arrays, with limits, for the CLI and the job's decode/compose stages.

Decoding applies the EXIF orientation (faces are detected upright) and refuses images beyond the
pixel limit before decompressing them (decompression bombs). Only the still-image formats below are
parsed (Pillow would otherwise try every plugin it has on untrusted bytes, some of which call out to
external programs); animated images are refused, because only their first frame could be checked for
faces. 16-bit images are scaled to 8 bits, palette/grayscale/CMYK are converted to RGB, and alpha is
dropped without compositing, so a face hidden under transparent pixels is still seen. Encoding writes
the format the member's extension names; anonymized images are written without metadata (EXIF can
hold GPS positions, names, serials).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

IMAGE_EXTENSIONS = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "gif": "GIF",
}
# What Pillow may parse. (JPEGs with several pictures, MPO, come through the JPEG plugin: their first
# picture is the photo itself.)
DECODE_FORMATS = tuple(sorted(set(IMAGE_EXTENSIONS.values())))
DEFAULT_MAX_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image raypipe can process; the message says why."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than the limit allows (found from its header, before decoding)."""


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, upright


def image_format_for(member_name: str) -> str | None:
    """The PIL format for a member/file name by its last extension, or None if it is not an image."""
    ext = member_name.rsplit(".", 1)[-1].lower() if "." in member_name else ""
    return IMAGE_EXTENSIONS.get(ext)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode to upright RGB uint8. Raises :class:`ImageDecodeError` naming the problem."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            if width < 1 or height < 1:
                raise ImageDecodeError(f"image has no pixels ({width}x{height})")
            frames = getattr(img, "n_frames", 1)
            if frames > 1 and img.format != "MPO":
                raise ImageDecodeError(
                    f"{img.format} with {frames} frames (animated or multi-page): only still images are"
                    " processed, so not every frame could be checked for faces"
                )
            img.seek(0)
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, beyond ~179 M pixels
        raise ImageTooLargeError(f"image is over the pixel limit: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        # The bytes are untrusted: whatever the decoder raises on them (UnidentifiedImageError, OSError,
        # SyntaxError, struct errors in EXIF parsing, ...) says the image is unusable, not that the
        # machine is broken.
        raise ImageDecodeError(f"not a decodable image: {type(exc).__name__}: {exc}") from exc
    return DecodedImage(rgb=rgb)


def _to_rgb(img: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits rather than let PIL clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        gray = np.clip(np.rint(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def encode_image(rgb: np.ndarray, image_format: str) -> bytes:
    """Encode RGB uint8 as ``image_format`` (PIL name), without metadata."""
    from PIL import Image

    options: dict[str, object] = {}
    if image_format == "JPEG":
        options = {"quality": 95, "subsampling": 0}
    elif image_format == "WEBP":
        options = {"lossless": True}
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=image_format, **options)
    return buffer.getvalue()
