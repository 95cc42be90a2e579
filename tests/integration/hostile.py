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


class TarWriter:
    """A tar written member by member with plain tarfile: anything goes, links and unsafe names included."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.archive = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.GNU_FORMAT)  # noqa: SIM115

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.archive.addfile(info, io.BytesIO(data))

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
    return cases
