"""Image bytes <-> RGB arrays, with limits, for the CLI and the job's decode/compose stages.

Decoding applies the EXIF orientation (faces are detected upright) and refuses images beyond the
pixel limit before decompressing them. Encoding writes the format the member's extension names;
anonymized images are written without metadata (EXIF can hold GPS positions, names, serials).
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
}
DEFAULT_MAX_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image raypipe can process; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, upright
    format: str  # PIL format name of the source (JPEG, PNG, ...)


def image_format_for(member_name: str) -> str | None:
    """The PIL format for a member/file name by its last extension, or None if it is not an image."""
    ext = member_name.rsplit(".", 1)[-1].lower() if "." in member_name else ""
    return IMAGE_EXTENSIONS.get(ext)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode to upright RGB uint8. Raises :class:`ImageDecodeError` naming the problem."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            if width < 1 or height < 1:
                raise ImageDecodeError(f"image has no pixels ({width}x{height})")
            source_format = img.format or "PNG"
            img.seek(0)  # animated images: the first frame
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc
    return DecodedImage(rgb=rgb, format=source_format)


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
