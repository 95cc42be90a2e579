"""Where the bytes of a JPEG or PNG file go: its picture streams, its metadata, and anything else.

raypipe releases a faceless JPEG or PNG byte for byte, so it must know what every byte is: part of a
picture it scanned, or metadata it searched for embedded pictures. These walkers follow each file's
own structure (JPEG markers and segment lengths, PNG chunk lengths) to its end marker and report
what lies beyond it instead of skipping it. Pure byte parsing: nothing here decodes pixels.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Inside entropy-coded JPEG data 0xFF is always followed by 0x00 (stuffing), a restart marker or
# another 0xFF (fill): anything else starts the next segment.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FILL = re.compile(rb"\xff+")
# Segments that hold no pixels and whose bytes a writer may choose freely: APP0-APP15, JPG0-JPG13
# (reserved extensions) and comments.
_JPEG_FREE_MARKERS = frozenset(range(0xE0, 0xFF))
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
# PNG chunks that make up the picture itself; every other chunk is searched as metadata.
_PNG_PICTURE_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS"})

# What an embedded picture starts with: a JPEG start marker followed by a marker, or the PNG
# signature; in text metadata (XMP) also their base64 forms ("/9j/" and "iVBORw0KGgo").
_EMBEDDED = re.compile(rb"\xff\xd8\xff|" + re.escape(PNG_SIGNATURE))
_EMBEDDED_BASE64 = re.compile(rb"(?:/9j/|iVBORw0KGgo)[A-Za-z0-9+/=\r\n]*")


# A picture written as text: a data URI, or the base64 start of a JPEG, PNG, GIF, WebP or TIFF.
_TEXT_PICTURE = re.compile(rb"data:image/|(?:/9j/|iVBORw0KGgo|R0lGOD[dl]h|UklGR|SUkqA|TU0AK)[A-Za-z0-9+/=]{16}")


def picture_in_text(data: bytes) -> str | None:
    """What a text value holds that is a picture (a JPEG or PNG signature, a data URI, a base64 picture),
    said for an error message; None when it holds none of these."""
    raw = _EMBEDDED.search(data)
    if raw is not None:
        return f"holds a picture's signature at byte {raw.start()}"
    written = _TEXT_PICTURE.search(data)
    if written is not None:
        return f"holds a picture written as text (data URI or base64) at byte {written.start()}"
    return None


class LayoutError(ValueError):
    """The bytes do not follow their format's structure; the message says where."""


@dataclass(frozen=True)
class Span:
    """Bytes ``start:end`` of a metadata segment or chunk (``where`` names it: ``APP1``, ``tEXt``)."""

    start: int
    end: int
    where: str


@dataclass
class Layout:
    """The structure of one file: its picture streams (a JPEG with several pictures, an MPO, has one
    stream per picture, back to back), its metadata, and the bytes after the last end marker."""

    streams: list[tuple[int, int]] = field(default_factory=list)
    metadata: list[Span] = field(default_factory=list)
    trailing: int = 0  # bytes after the last stream that are not zero padding
    animation: bool = False  # PNG animation frame data (fdAT) is present


def jpeg_layout(data: bytes) -> Layout:
    """Walk a JPEG (or MPO) stream by stream: every stream from its start marker (SOI) to its end
    marker (EOI). Bytes after the last complete stream count as trailing unless they are zeros."""
    layout = Layout()
    end = _jpeg_stream(data, 0, layout.metadata)
    layout.streams.append((0, end))
    while end < len(data) and data.startswith(b"\xff\xd8", end):
        found: list[Span] = []
        try:
            next_end = _jpeg_stream(data, end, found)
        except LayoutError:
            break  # not a complete picture: it is what follows the last one
        layout.streams.append((end, next_end))
        layout.metadata.extend(found)
        end = next_end
    layout.trailing = _unpadded(data, end)
    return layout


def _jpeg_stream(data: bytes, start: int, metadata: list[Span]) -> int:
    """End offset (after EOI) of the JPEG stream at ``start``; its free-form segments go to ``metadata``."""
    if not data.startswith(b"\xff\xd8", start):
        raise LayoutError(f"no JPEG start marker (SOI) at byte {start}")
    pos, size = start + 2, len(data)
    while True:
        if pos >= size or data[pos] != 0xFF:
            where = "the end of the data" if pos >= size else f"byte {pos}"
            raise LayoutError(f"JPEG: no marker at {where}, before the end marker (EOI)")
        fill = _JPEG_FILL.match(data, pos)
        assert fill is not None
        pos = fill.end()
        if pos >= size:
            raise LayoutError("JPEG ends inside a marker, before the end marker (EOI)")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return pos
        if marker in (0x00, 0xD8):
            raise LayoutError(f"JPEG: 0xFF{marker:02X} at byte {pos - 2} is not a segment marker")
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > size:
            raise LayoutError(f"JPEG ends inside the segment header of marker 0x{marker:02X}")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > size:
            raise LayoutError(f"JPEG segment 0x{marker:02X} at byte {pos - 2} runs past the end of the data")
        if marker in _JPEG_FREE_MARKERS:
            metadata.append(Span(pos + 2, pos + length, _jpeg_marker_name(marker)))
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            found = _JPEG_NEXT_MARKER.search(data, pos)
            if found is None:
                raise LayoutError("JPEG ends inside its image data, before the end marker (EOI)")
            pos = found.start()


def _jpeg_marker_name(marker: int) -> str:
    if marker == 0xFE:
        return "COM"
    if marker <= 0xEF:
        return f"APP{marker - 0xE0}"
    return f"JPG{marker - 0xF0}"


def png_layout(data: bytes) -> Layout:
    """Walk a PNG chunk by chunk to its end chunk (IEND); bytes after it count as trailing."""
    if not data.startswith(PNG_SIGNATURE):
        raise LayoutError("no PNG signature")
    layout = Layout()
    pos, size = len(PNG_SIGNATURE), len(data)
    while True:
        if pos + 8 > size:
            raise LayoutError("PNG ends before its end chunk (IEND)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body, end = pos + 8, pos + 12 + length  # length, type, data, CRC
        if end > size:
            raise LayoutError(f"PNG chunk {kind!r} at byte {pos} runs past the end of the data")
        if kind == b"IEND":
            layout.streams.append((0, end))
            layout.trailing = _unpadded(data, end)
            return layout
        if kind == b"fdAT":
            layout.animation = True
        if kind not in _PNG_PICTURE_CHUNKS:
            layout.metadata.append(Span(body, body + length, kind.decode("latin-1")))
        pos = end


def _unpadded(data: bytes, end: int) -> int:
    """How many bytes after ``end`` are not zeros (zero padding after the end marker holds nothing)."""
    rest = len(data) - end
    return rest if rest and data.count(0, end) != rest else 0


@dataclass(frozen=True)
class Embedded:
    """A place in the metadata where a picture may start: raw bytes ``start:end`` (up to the end of
    its segment), or base64 text there (``base64``)."""

    start: int
    end: int
    where: str
    base64: bool = False


def embedded_candidates(data: bytes, metadata: list[Span]) -> Iterator[Embedded]:
    """Every place in the metadata where a JPEG or PNG (raw or base64) starts, in file order.

    Nested pictures (a thumbnail's own thumbnail) are found too: every signature counts.
    """
    for span in metadata:
        for hit in _EMBEDDED.finditer(data, span.start, span.end):
            yield Embedded(hit.start(), span.end, span.where)
        for hit in _EMBEDDED_BASE64.finditer(data, span.start, span.end):
            yield Embedded(hit.start(), hit.end(), span.where, base64=True)
