"""A hostile-input corpus, built in code: damaged tars, unsafe members, odd and malicious images.

Each case is a :class:`Case`: the sample key it produces in the audit, and the outcome raypipe must
record for it (status, failing step, and a fragment of the message). ``build_corpus`` writes the
shards and returns the cases in shard order.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LIMITS = {"max_member_bytes": 1_000_000, "max_faces_per_image": 32}  # max_image_pixels keeps its default


@dataclass(frozen=True)
class Case:
    what: str  # the hostile input, as the FAULTS.md table names it
    shard: str
    key: str
    status: str
    step: str | None = None  # error_step, for failed and quarantined samples
    message: str | None = None  # a fragment of the recorded error
    released_unchanged: bool = False  # released byte for byte (no face, nothing to do)


class FileCreator:
    """Unpickling this object creates ``path``: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_bomb(side: int) -> bytes:
    """A complete, valid PNG of side x side black pixels: tiny on disk, side**2 bytes once decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = bytes(side + 1)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def crowd(portrait: np.ndarray, faces: int = 40) -> np.ndarray:
    """``faces`` copies of the portrait's face in a grid (8 per row)."""
    tile = portrait[66:266, 130:310]  # the astronaut's face with some margin
    rows = [np.concatenate([tile] * 8, axis=1) for _ in range(faces // 8)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def exif_rotated(portrait: np.ndarray) -> bytes:
    """The portrait stored sideways with EXIF orientation 6: upright only if the orientation is applied."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(portrait).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=92, exif=exif)


def animated(portrait: np.ndarray, image_format: str) -> bytes:
    frames = [Image.fromarray(portrait).resize((128, 128)), Image.fromarray(255 - portrait).resize((128, 128))]
    return encoded(frames[0], image_format, save_all=True, append_images=frames[1:])


# --- pictures built to hide a face from a scanner that looks only at the main picture ---------------


def face_crop(portrait: np.ndarray) -> np.ndarray:
    """The astronaut's face with some margin (200x180): small enough to hide, big enough to detect."""
    return np.ascontiguousarray(portrait[66:266, 130:310])


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def with_segment(jpeg: bytes, segment: bytes) -> bytes:
    """``jpeg`` with ``segment`` right after its start marker (SOI)."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + segment + jpeg[2:]


def exif_thumbnail_segment(thumbnail: bytes, orientation: int | None = None) -> bytes:
    """An EXIF APP1 segment as cameras write it: IFD0 (optionally an orientation), then IFD1 pointing
    at a JPEG thumbnail (JPEGInterchangeFormat / JPEGInterchangeFormatLength)."""
    ifd0 = [(0x0112, 3, 1, orientation)] if orientation else []
    ifd0_size = 2 + 12 * len(ifd0) + 4
    ifd1_offset = 8 + ifd0_size
    thumb_offset = ifd1_offset + 2 + 12 * 2 + 4
    tiff = b"II*\x00" + struct.pack("<I", 8)
    tiff += struct.pack("<H", len(ifd0))
    for tag, kind, count, value in ifd0:
        tiff += struct.pack("<HHIHH", tag, kind, count, value, 0)
    tiff += struct.pack("<I", ifd1_offset)
    tiff += struct.pack("<H", 2)
    tiff += struct.pack("<HHII", 0x0201, 4, 1, thumb_offset) + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail))
    tiff += struct.pack("<I", 0) + thumbnail
    return jpeg_segment(0xE1, b"Exif\x00\x00" + tiff)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk(png: bytes, chunk: bytes) -> bytes:
    """``png`` with ``chunk`` right before its end chunk (IEND)."""
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def multi_picture(first: Image.Image, *others: Image.Image) -> bytes:
    """An MPO (a JPEG with further pictures, as 3D and HDR cameras write)."""
    return encoded(first, "MPO", save_all=True, append_images=list(others))


def upright_with_rotating_exif(portrait: np.ndarray) -> bytes:
    """The portrait stored upright but tagged orientation 6: upright only to readers that ignore EXIF."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(portrait), "JPEG", quality=92, exif=exif)


def face_in_alpha(portrait: np.ndarray) -> bytes:
    """A black PNG whose alpha channel is the portrait in gray: blank to a scanner of its colours, a
    face to any viewer that composites it over a background."""
    alpha = np.asarray(Image.fromarray(portrait).convert("L"))
    return encoded(Image.fromarray(np.dstack([np.zeros_like(portrait), alpha]), "RGBA"), "PNG")


def pax_member(name: str) -> tuple[tarfile.TarInfo, bytes]:
    """A pax header that gives the next member ``name`` (which may hold a NUL)."""
    body = b" path=" + name.encode("utf-8", "surrogateescape") + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return raw_header(str(length).encode() + body)


def raw_header(payload: bytes, kind: bytes = tarfile.XHDTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = kind
    return info, payload


class TarWriter:
    """A tar written member by member with plain tarfile: anything goes, links and unsafe names included."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.archive = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.archive.addfile(info, io.BytesIO(data))

    def header(self, header: tuple[tarfile.TarInfo, bytes]) -> None:
        """An extended header written as it is (tarfile would otherwise build its own)."""
        info, payload = header
        info.size = len(payload)
        self.archive.addfile(info, io.BytesIO(payload))

    def link(self, name: str, target: str, kind: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        self.archive.addfile(info)

    def bytes(self) -> bytes:
        self.archive.close()
        return self.buffer.getvalue()


def build_corpus(folder: Path, sandbox: Path) -> list[Case]:
    """Write the hostile shards into ``folder``; payloads that would write files aim into ``sandbox``."""
    import torch
    from skimage import data

    portrait = np.ascontiguousarray(data.astronaut())
    faceless = encoded(Image.fromarray(np.ascontiguousarray(data.coffee())).resize((200, 133)), "JPEG")
    gray16 = (np.asarray(Image.fromarray(portrait).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    rgba = np.dstack([portrait, np.full(portrait.shape[:2], 200, np.uint8)])
    torch_payload = io.BytesIO()
    torch.save(FileCreator(sandbox / "created-by-pth"), torch_payload)

    cases: list[Case] = []
    main = "hostile-00000.tar"
    tar = TarWriter()

    def case(what: str, key: str, status: str, step: str | None = None, message: str | None = None, **kw: bool):
        cases.append(Case(what, main, key, status, step, message, **kw))

    tar.add("dotted.v2.jpg", faceless)
    tar.add("dotted.v2.json", b'{"caption": "keys end at the first dot of the base name"}')
    case("keys with dots (dotted.v2.jpg)", "dotted", "no_face", released_unchanged=True)
    tar.add("dir.v2/photo.jpg", faceless)
    case("a dotted folder (dir.v2/photo.jpg)", "dir.v2/photo", "no_face", released_unchanged=True)
    tar.add("textjpg.jpg", b"this is plain text, not a JPEG\n")
    case("a .jpg that is text", "textjpg", "failed", "decode", "textjpg.jpg: not a decodable image")
    tar.add("bomb.png", png_bomb(8000))
    case(
        "PNG decompression bomb (8000x8000 pixels in 62 kB)",
        "bomb",
        "failed",
        "decode",
        "8000x8000 = 64000000 pixels, over the limit of 50000000 (limits.max_image_pixels)",
    )
    tar.add("png16.png", encoded(Image.fromarray(gray16), "PNG"))
    case("16-bit PNG", "png16", "anonymized")
    tar.add("cmyk.jpg", encoded(Image.fromarray(portrait).convert("CMYK"), "JPEG", quality=92))
    case("CMYK JPEG", "cmyk", "anonymized")
    tar.add("gray.jpg", encoded(Image.fromarray(portrait).convert("L"), "JPEG", quality=92))
    case("grayscale JPEG", "gray", "anonymized")
    tar.add("rgba.png", encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    case("RGBA PNG", "rgba", "anonymized")
    tar.add("rotated.jpg", exif_rotated(portrait))
    case("EXIF-rotated JPEG (orientation 6)", "rotated", "anonymized")
    tar.add("anim.gif", animated(portrait, "GIF"))
    case("animated GIF", "anim", "failed", "decode", "GIF with 2 frames")
    tar.add("animw.webp", animated(portrait, "WEBP"))
    case("animated WebP", "animw", "failed", "decode", "WEBP with 2 frames")
    tar.add("pickled.pkl", pickle.dumps(FileCreator(sandbox / "created-by-pkl")))
    tar.add("pickled.cls", b"1")
    case(".pkl member whose unpickling creates a file", "pickled", "no_face", released_unchanged=True)
    tar.add("torched.pth", torch_payload.getvalue())
    case(".pth member (torch.load would run its pickle)", "torched", "no_face", released_unchanged=True)
    tar.add("tiny.png", encoded(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG"))
    case("1x1 image", "tiny", "no_face", released_unchanged=True)
    tar.add("crowd.jpg", encoded(Image.fromarray(crowd(portrait)), "JPEG", quality=90))
    case(
        "40 faces in one image",
        "crowd",
        "quarantined",
        "detect",
        "40 faces, over the limit (limits.max_faces_per_image=32)",
    )
    tar.add("linked.jpg", faceless)
    tar.link("linked.txt", "/etc/passwd", tarfile.SYMTYPE)
    case("symlink member", "linked", "failed", "read", "member 'linked.txt' not read: symlink")
    tar.add("hardlinked.jpg", faceless)
    tar.link("hardlinked.json", "hardlinked.jpg", tarfile.LNKTYPE)
    case("hardlink member", "hardlinked", "failed", "read", "member 'hardlinked.json' not read: hardlink")
    tar.add("../escape.jpg", faceless)
    case("member named ../escape.jpg", "../escape", "failed", "read", "not read: parent_reference")
    tar.add("/abs/evil.jpg", faceless)
    case("member named /abs/evil.jpg", "/abs/evil", "failed", "read", "not read: absolute_name")
    tar.add("dup.jpg", faceless)
    tar.add("dup.jpg", faceless)
    case("duplicate member names (dup.jpg twice)", "dup", "failed", "read", "duplicate member names")
    tar.add("nc.jpg", faceless)
    case("non-contiguous key: first part", "nc", "no_face", released_unchanged=True)
    tar.add("between.jpg", faceless)
    case("non-contiguous key: the sample between", "between", "no_face", released_unchanged=True)
    tar.add("nc.txt", b"the same key again")
    case("non-contiguous key: second part", "nc", "failed", "read", "key 'nc' was already used")
    tar.add("emptyjpg.jpg", b"")
    case("empty .jpg member", "emptyjpg", "failed", "decode", "emptyjpg.jpg: not a decodable image")
    tar.add("emptytxt.jpg", faceless)
    tar.add("emptytxt.txt", b"")
    case("empty .txt member", "emptytxt", "no_face", released_unchanged=True)
    tar.add("huge.bin", bytes(LIMITS["max_member_bytes"] + 1))
    case(
        "member over limits.max_member_bytes",
        "huge",
        "failed",
        "read",
        "member 'huge.bin' not read: over_limit (1000001 bytes, over the limit of 1000000; limits.max_member_bytes)",
    )
    add_hidden_faces(tar, case, portrait)
    add_hostile_headers(tar, case, faceless)
    (folder / main).write_bytes(tar.bytes())

    # A truncated shard: two good samples, then the tar stops inside the third member's data.
    truncated = TarWriter()
    for key in ("t0", "t1", "t2"):
        truncated.add(f"{key}.jpg", faceless)
    data = truncated.bytes()
    member_blocks = 512 + -(-len(faceless) // 512) * 512  # header + padded data
    cut = 2 * member_blocks + 512 + len(faceless) // 2  # inside t2.jpg's data
    (folder / "hostile-00001.tar").write_bytes(data[:cut])
    cases += [
        Case("truncated tar: samples before the cut", "hostile-00001.tar", "t0", "no_face", released_unchanged=True),
        Case("truncated tar: samples before the cut", "hostile-00001.tar", "t1", "no_face", released_unchanged=True),
        Case(
            "truncated tar: the sample cut off",
            "hostile-00001.tar",
            "t2",
            "failed",
            "read",
            "unreadable tar while reading sample 't2': unexpected end of data",
        ),
    ]

    # A garbage header after the first member: nothing after it can be trusted, nor can the sample
    # before it be known complete.
    damaged = TarWriter()
    damaged.add("g0.jpg", faceless)
    damaged.add("g1.jpg", faceless)
    garbage = bytearray(damaged.bytes())
    garbage[member_blocks : member_blocks + 512] = b"\x07" * 512  # g1.jpg's header
    (folder / "hostile-00002.tar").write_bytes(bytes(garbage))
    cases.append(Case("garbage tar header", "hostile-00002.tar", "g0", "failed", "read", "damaged member header"))

    # Not a tar at all.
    (folder / "hostile-00003.tar").write_bytes(b"\x00garbage\xff" * 400)
    cases.append(Case("a shard that is not a tar", "hostile-00003.tar", "", "failed", "read", "unreadable tar"))

    # 40,000 members in one sample (23 s in the reader when its checks were quadratic), then the next.
    many = TarWriter()
    for index in range(MANY_MEMBERS):
        many.add(f"many.{index}.txt", b"x")
    many.add("after.jpg", faceless)
    (folder / "hostile-00004.tar").write_bytes(many.bytes())
    cases += [
        Case("40,000 members in one sample", "hostile-00004.tar", "many", "no_face", released_unchanged=True),
        Case("40,000 members: the next sample", "hostile-00004.tar", "after", "no_face", released_unchanged=True),
    ]
    return cases


MANY_MEMBERS = 40_000


def hidden_face(portrait: np.ndarray) -> bytes:
    """The JPEG of a face that the attacks below hide; no output shard may ever contain these bytes."""
    return encoded(Image.fromarray(face_crop(portrait)), "JPEG", quality=85)


def add_hidden_faces(tar: TarWriter, case: Callable[..., None], portrait: np.ndarray) -> None:
    """Faces where a scanner of the main picture alone would not look, and pictures under other names."""
    import base64

    from skimage import data as skimage_data

    face = hidden_face(portrait)
    person = Image.fromarray(portrait)
    coffee = Image.fromarray(np.ascontiguousarray(skimage_data.coffee())).resize((200, 133))
    jpeg, png = encoded(coffee, "JPEG"), encoded(coffee, "PNG")
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta GImage:Data='" + base64.b64encode(face) + b"'/>"
    only_in = "which raypipe cannot anonymize"
    hidden = [
        ("rawface.jpg", upright_with_rotating_exif(portrait), "found only when the EXIF orientation (6) is ignored"),
        ("mpo.jpg", multi_picture(coffee, person), f"1 face(s) in picture 2 of 2 (MPO), {only_in}"),
        ("thumb.jpg", with_segment(jpeg, exif_thumbnail_segment(face)), "in a picture embedded in APP1 at byte"),
        ("icc.jpg", with_segment(jpeg, jpeg_segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + face)), "embedded in APP2"),
        ("xmp.jpg", with_segment(jpeg, jpeg_segment(0xE1, xmp)), "in a base64 picture embedded in APP1"),
        ("pngchunk.png", with_chunk(png, png_chunk(b"prVt", face)), "in a picture embedded in prVt"),
        ("alpha.png", face_in_alpha(portrait), "alpha.png: 1 face(s) in the alpha channel"),
    ]
    for name, data, message in hidden:
        tar.add(name, data)
        case(f"a face hidden: {name}", name.split(".")[0], "quarantined", "detect", message)
    refused = [
        ("appended.jpg", jpeg + face, "appended.jpg: a second picture follows the JPEG end marker (EOI)"),
        ("pngtail.png", png + face, "bytes follow the PNG end chunk (IEND)"),
        ("icon.ico", encoded(Image.fromarray(face_crop(portrait)), "ICO"), "holds a picture in the ICO format"),
    ]
    for name, data, message in refused:
        tar.add(name, data)
        case(f"bytes no scanner sees: {name}", name.split(".")[0], "failed", "scan", message)
    for name, data in [
        ("netpbm.ppm", encoded(person, "PPM")),
        ("graymap.bin", encoded(person.convert("L"), "PPM")),
        ("spaced.jpeg ", encoded(person, "JPEG", quality=92)),
        ("disguised.dat", encoded(person, "JPEG", quality=92)),
    ]:
        tar.add(name, data)
        case(f"a picture under another name: {name!r}", name.split(".")[0], "anonymized")
    tar.add("webptail.webp", encoded(coffee, "WEBP") + face)
    case("a faceless WebP with a face appended", "webptail", "no_face")  # released as a lossless copy
    bomb = png_bomb(7000)  # 49 M pixels each: under limits.max_image_pixels, 588 MB as RGB together
    for index in range(4):
        tar.add(f"budget.{index}.png", bomb)
    case(
        "four 7000x7000 PNGs in one sample",
        "budget",
        "failed",
        "decode",
        "budget.2.png: the sample's images hold 147000000 pixels up to this one, over the limit of 100000000"
        " (limits.max_sample_pixels)",
    )


def add_hostile_headers(tar: TarWriter, case: Callable[..., None], faceless: bytes) -> None:
    """Member names no two readers agree on, and pax headers that cost tarfile seconds to parse."""
    tar.header(pax_member("nul.jpg\0.txt"))
    tar.add("nul.txt", faceless)
    case("pax name x.jpg\\0.txt", "nul", "failed", "read", "member 'nul.jpg\\x00.txt' not read: nul_in_name")
    tar.add("latin\udce9.jpg", faceless)
    case("a name that is not UTF-8", "latin\\xe9", "failed", "read", "not read: undecodable_name")
    tar.header(raw_header(b"1" * 128 * 1024))
    tar.add("paxbomb.jpg", faceless)
    case(
        "pax header of 128 KB of digits",
        "paxbomb",
        "failed",
        "read",
        "member 'paxbomb.jpg' not read: extended_header (extended header of 131072 bytes, over the limit of 65536)",
    )
    tar.header(raw_header(b"1" * 60 * 1024))
    tar.add("paxdigits.jpg", faceless)
    case("pax header of 60 KB of digits", "paxdigits", "failed", "read", "a run of more than 64 digits")
