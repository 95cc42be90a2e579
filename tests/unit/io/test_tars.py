from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from typing import Any

import pytest

from raypipe.io import tars
from raypipe.io.tars import (
    Sample,
    TarProblem,
    TarReadError,
    iter_samples,
    read_tar,
    split_member_name,
    tar_bytes,
    write_tar,
)


def samples_fixture() -> list[Sample]:
    return [
        Sample("000001", [("000001.jpg", b"\xff\xd8jpeg-1"), ("000001.json", b'{"a": 1}')]),
        Sample("000002", [("000002.jpg", b"\xff\xd8jpeg-2" * 300), ("000002.cls", b"7")]),
        Sample("dir/000003", [("dir/000003.seg.png", b"\x89PNG" + bytes(range(256)))]),
    ]


def raw_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar written member by member with plain tarfile, for inputs raypipe would never write."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for info, data in entries:
            if data is None:
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


# --- key rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key", "ext"),
    [
        ("000001.jpg", "000001", "jpg"),
        ("a/b.c.seg.png", "a/b", "c.seg.png"),
        ("x/y/z.tar.gz", "x/y/z", "tar.gz"),
        ("dir.v2/file.txt", "dir.v2/file", "txt"),
        ("noext", "noext", ""),
    ],
)
def test_key_rule(name: str, key: str, ext: str) -> None:
    assert split_member_name(name) == (key, ext)
    assert Sample.ext(name) == ext


def test_consecutive_members_with_the_same_key_form_one_sample() -> None:
    data = raw_tar(
        [
            (member("a/b.jpg"), b"1"),
            (member("a/b.c.seg.png"), b"2"),
            (member("a/c.jpg"), b"3"),
            (member("a/b.txt"), b"4"),  # same key again but not consecutive: a new sample
        ]
    )
    found = read_tar(data)
    assert [(s.key, s.names) for s in found] == [
        ("a/b", ["a/b.jpg", "a/b.c.seg.png"]),
        ("a/c", ["a/c.jpg"]),
        ("a/b", ["a/b.txt"]),
    ]
    assert found[0].get("c.seg.png") == b"2"
    assert found[0].get("png") is None


# --- round trip and determinism ------------------------------------------------------------------


def test_round_trip_keeps_keys_names_order_and_bytes() -> None:
    original = samples_fixture()
    assert read_tar(tar_bytes(original)) == original


def test_same_samples_give_identical_bytes() -> None:
    first = tar_bytes(samples_fixture())
    second = tar_bytes(samples_fixture())
    assert first == second
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(tar_bytes(samples_fixture())).hexdigest()


def test_written_members_have_fixed_metadata() -> None:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(samples_fixture()))) as archive:
        infos = archive.getmembers()
    assert [i.name for i in infos] == [n for s in samples_fixture() for n in s.names]
    for info in infos:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
        assert info.isreg()
        assert info.pax_headers == {}


def test_long_and_non_ascii_names_round_trip_deterministically() -> None:
    long_key = "deep/" + "d" * 150 + "/" + "k" * 120
    samples = [
        Sample(long_key, [(long_key + ".jpg", b"x")]),
        Sample("visage-é", [("visage-é.jpg", b"y")]),
    ]
    data = tar_bytes(samples)
    assert data == tar_bytes(samples)
    assert read_tar(data) == samples


def test_write_tar_to_a_file_object(tmp_path) -> None:
    path = tmp_path / "out.tar"
    with open(path, "wb") as handle:
        write_tar(samples_fixture(), handle)
    assert path.read_bytes() == tar_bytes(samples_fixture())


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([Sample("a", [("/etc/a.jpg", b"")])], "unsafe member name"),
        ([Sample("../a", [("../a.jpg", b"")])], "unsafe member name"),
        ([Sample("a", [("b.jpg", b"")])], "not its sample's key"),
        ([Sample("a", [("a.jpg", b"")]), Sample("a", [("a.txt", b"")])], "share the key"),
        ([Sample("a", [])], "no members"),
    ],
)
def test_write_refuses_samples_a_reader_would_not_get_back(samples: list[Sample], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tar_bytes(samples)


def test_webdataset_reads_our_tars_with_the_same_keys(tmp_path) -> None:
    wds = pytest.importorskip("webdataset")
    path = tmp_path / "shard.tar"
    path.write_bytes(tar_bytes(samples_fixture()))
    rows = list(wds.WebDataset(f"file://{path}", shardshuffle=False, empty_check=False))
    assert [row["__key__"] for row in rows] == [s.key for s in samples_fixture()]
    assert rows[2]["seg.png"] == samples_fixture()[2].members[0][1]


# --- problems are reported, not read -----------------------------------------------------------


def test_links_devices_and_unsafe_names_are_reported_not_read() -> None:
    data = raw_tar(
        [
            (member("s1", tarfile.DIRTYPE), None),
            (member("s1/a.jpg"), b"image"),
            (member("s1/a.txt", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
            (member("s1/a.json", tarfile.LNKTYPE, linkname="s1/a.jpg"), None),
            (member("s1/a.dev", tarfile.CHRTYPE), None),
            (member("s1/a.fifo", tarfile.FIFOTYPE), None),
            (member("s1/a.cls"), b"3"),
            (member("/abs/b.jpg"), b"secret"),
            (member("s1/../../c.jpg"), b"escape"),
            (member("s1/.hidden"), b"dot"),
            (member("s2.jpg"), b"ok"),
        ]
    )
    found = read_tar(data)
    samples = [item for item in found if isinstance(item, Sample)]
    problems = [item for item in found if isinstance(item, TarProblem)]
    assert [(s.key, s.members) for s in samples] == [
        ("s1/a", [("s1/a.jpg", b"image"), ("s1/a.cls", b"3")]),
        ("s2", [("s2.jpg", b"ok")]),
    ]
    assert [(p.member_name, p.reason) for p in problems] == [
        ("s1/a.txt", tars.SYMLINK),
        ("s1/a.json", tars.HARDLINK),
        ("s1/a.dev", tars.SPECIAL_FILE),
        ("s1/a.fifo", tars.SPECIAL_FILE),
        ("/abs/b.jpg", tars.ABSOLUTE_NAME),
        ("s1/../../c.jpg", tars.PARENT_REFERENCE),
        ("s1/.hidden", tars.EMPTY_KEY),
    ]
    assert problems[0].key == "s1/a"
    # the stream order is kept: the sample s1/a ends after its last regular member
    assert isinstance(found[-1], Sample) and found[-1].key == "s2"


def test_dotted_names_that_are_not_parent_references_are_read() -> None:
    assert read_tar(raw_tar([(member("a..b.jpg"), b"1")])) == [Sample("a", [("a..b.jpg", b"1")])]


# --- damaged archives --------------------------------------------------------------------------


def block_offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """(header offset, end of padded data) per member name."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {
            i.name: (i.offset, i.offset_data + -(-i.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
            for i in archive.getmembers()
        }


def read_until_error(data: bytes) -> tuple[list[Sample | TarProblem], TarReadError]:
    found: list[Sample | TarProblem] = []
    with pytest.raises(TarReadError) as caught:
        for item in iter_samples(io.BytesIO(data), source="s3://b/in/data-00001.tar"):
            found.append(item)
    return found, caught.value


def test_truncated_inside_member_data_raises_after_complete_samples() -> None:
    data = tar_bytes(samples_fixture())
    cut = block_offsets(data)["000002.jpg"][0] + tarfile.BLOCKSIZE + 700
    found, error = read_until_error(data[:cut])
    assert found == samples_fixture()[:1]
    assert "s3://b/in/data-00001.tar" in str(error)
    assert "000002" in str(error)
    assert error.pending is not None and error.pending.key == "000002"


def test_truncated_at_a_member_boundary_is_not_mistaken_for_the_end() -> None:
    data = tar_bytes(samples_fixture())
    cut = block_offsets(data)["000002.cls"][1]  # everything up to the end of sample 000002's data
    found, error = read_until_error(data[:cut])
    # 000002 might have had more members: it is not yielded as complete
    assert found == samples_fixture()[:1]
    assert "end-of-archive" in str(error)
    assert error.pending is not None and error.pending.names == ["000002.jpg", "000002.cls"]


def test_truncated_inside_a_header_raises() -> None:
    data = tar_bytes(samples_fixture())
    cut = block_offsets(data)["dir/000003.seg.png"][0] + 100
    found, error = read_until_error(data[:cut])
    assert found == samples_fixture()[:1]
    assert "truncated" in str(error)


def test_garbage_header_in_the_middle_raises() -> None:
    data = bytearray(tar_bytes(samples_fixture()))
    start = block_offsets(bytes(data))["000002.jpg"][0]
    data[start : start + 512] = b"\x07" * 512
    found, error = read_until_error(bytes(data))
    # the damaged header might have belonged to 000001, so 000001 is not claimed complete
    assert found == []
    assert "damaged member header" in str(error)
    assert error.pending == samples_fixture()[0]


def test_empty_input_raises() -> None:
    with pytest.raises(TarReadError, match="unreadable tar"):
        list(iter_samples(io.BytesIO(b"")))


def test_empty_archive_yields_nothing() -> None:
    assert read_tar(tar_bytes([])) == []


def test_gzip_compressed_shards_are_read() -> None:
    assert read_tar(gzip.compress(tar_bytes(samples_fixture()), mtime=0)) == samples_fixture()


# --- limits and hostile headers ------------------------------------------------------------------


class HugeMemberTar(io.RawIOBase):
    """A tar of one huge member of zeros and a small one, generated on the fly: never all in memory."""

    def __init__(self, size: int) -> None:
        header = tarfile.TarInfo("big.bin")
        header.size = size
        self.head = header.tobuf(format=tarfile.GNU_FORMAT)
        self.zeros = size + (-size % tarfile.BLOCKSIZE)
        self.tail = raw_tar([(member("small.txt"), b"ok")])  # the small member and the end-of-archive blocks

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = len(buffer)
        if self.head:
            chunk, self.head = self.head[:n], self.head[n:]
        elif self.zeros:
            chunk = bytes(min(n, self.zeros))
            self.zeros -= len(chunk)
        else:
            chunk, self.tail = self.tail[:n], self.tail[n:]
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _read_measuring_peak(stream: Any, **options: Any) -> tuple[list[Any], int]:
    """Everything iter_samples yields for ``stream``, and the peak of Python memory while reading it."""
    import tracemalloc

    tracemalloc.start()
    try:
        found = list(iter_samples(stream, **options))
        return found, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_member_over_the_size_limit_is_reported_without_being_read_into_memory() -> None:
    size = 64 * 1024 * 1024
    found, peak = _read_measuring_peak(io.BufferedReader(HugeMemberTar(size)), max_member_bytes=1024)
    assert found == [
        TarProblem("big.bin", tars.OVER_LIMIT, "big", f"{size} bytes, over the limit of 1024"),
        Sample("small", [("small.txt", b"ok")]),
    ]
    assert peak < 4 * 1024 * 1024  # the 64 MiB member was skipped in small blocks


def test_members_at_the_limit_are_read() -> None:
    data = raw_tar([(member("a.bin"), b"x" * 10)])
    assert read_tar(data) == [Sample("a", [("a.bin", b"x" * 10)])]
    assert list(iter_samples(io.BytesIO(data), max_member_bytes=10)) == [Sample("a", [("a.bin", b"x" * 10)])]


def pax_header(payload: bytes, kind: bytes = tarfile.XHDTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = kind
    return info, payload


class Pieces(io.RawIOBase):
    """A stream of byte strings and runs of zeros (ints), generated on the fly."""

    def __init__(self, pieces: list[bytes | int]) -> None:
        self.pieces = list(pieces)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while self.pieces and not self.pieces[0]:
            self.pieces.pop(0)
        if not self.pieces:
            return 0
        head, n = self.pieces[0], len(buffer)
        if isinstance(head, int):
            chunk, self.pieces[0] = bytes(min(n, head)), head - min(n, head)
        else:
            chunk, self.pieces[0] = head[:n], head[n:]
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_huge_extended_header_is_skipped_unread_and_fails_only_its_member() -> None:
    size = 64 * 1024 * 1024
    header, _ = pax_header(b"")
    header.size = size
    before = raw_tar([(member("a.jpg"), b"1")])[: 2 * tarfile.BLOCKSIZE]
    after = raw_tar([(member("a.txt"), b"2"), (member("b.jpg"), b"3")])
    stream = io.BufferedReader(Pieces([before, header.tobuf(format=tarfile.GNU_FORMAT), size, after]))
    found, peak = _read_measuring_peak(stream)
    assert found == [
        TarProblem("a.txt", tars.EXTENDED_HEADER, "a", f"extended header of {size} bytes, over the limit of 65536"),
        Sample("a", [("a.jpg", b"1")]),
        Sample("b", [("b.jpg", b"3")]),
    ]
    assert peak < 4 * 1024 * 1024  # the 64 MiB payload was skipped in small reads


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"1" * 128 * 1024, "over the limit of 65536"),  # 25 s in tarfile's parser
        (b"1" * 60 * 1024, "a run of more than 64 digits"),  # under the size limit: 5 s in tarfile
        (b"30 path=" + b"7" * 60 * 1024 + b"\n", "a run of more than 64 digits"),
        (b"12 path=a.jpg", "malformed pax record at byte 0"),
        (b"9 path=b\n11 comment\n", "pax record without '=' at byte 9"),
        (b"11 path=ab\n\x00\x00junk", "data after the pax records at byte 11"),
    ],
)
def test_a_hostile_pax_header_costs_no_time_and_fails_only_its_member(payload: bytes, detail: str) -> None:
    import time

    data = raw_tar([pax_header(payload), (member("b.jpg"), b"1"), (member("c.jpg"), b"2")])
    started = time.perf_counter()
    found = read_tar(data)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.2, elapsed
    assert [type(item).__name__ for item in found] == ["TarProblem", "Sample"]
    problem = found[0]
    assert isinstance(problem, TarProblem)
    assert (problem.member_name, problem.reason, problem.key) == ("b.jpg", tars.EXTENDED_HEADER, "b")
    assert detail in problem.detail
    assert found[1] == Sample("c", [("c.jpg", b"2")])


def test_a_valid_pax_header_still_names_its_member() -> None:
    records = b"".join(
        _pax_record(key, value) for key, value in [(b"path", b"renamed.seg.png"), (b"comment", b"x" * 5000)]
    )
    data = raw_tar([pax_header(records), (member("short.png"), b"1")])
    assert read_tar(data) == [Sample("renamed", [("renamed.seg.png", b"1")])]


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def test_a_refused_global_pax_header_ends_the_shard() -> None:
    data = raw_tar([(member("a.jpg"), b"1"), pax_header(b"1" * 1000, tarfile.XGLTYPE), (member("b.jpg"), b"2")])
    found, error = read_until_error(data)
    assert found == [] and "a run of more than 64 digits" in str(error)
    assert error.pending == Sample("a", [("a.jpg", b"1")])


def test_names_with_a_nul_or_undecodable_bytes_are_problems_with_printable_keys() -> None:
    nul = [pax_header(_pax_record(b"path", b"x.jpg\x00.txt")), (member("x.txt"), b"text")]
    data = raw_tar([(member("x.json"), b"{}"), *nul, (member("bad\udcff.jpg"), b"2"), (member("ok.jpg"), b"3")])
    found = read_tar(data)
    assert found == [
        TarProblem("x.jpg\x00.txt", tars.NUL_IN_NAME, "x"),
        Sample("x", [("x.json", b"{}")]),
        TarProblem("bad\udcff.jpg", tars.UNDECODABLE_NAME, "bad\\xff"),
        Sample("ok", [("ok.jpg", b"3")]),
    ]


def test_audit_safe_text_escapes_what_cannot_be_stored() -> None:
    assert tars.audit_safe("visage-é") == "visage-é"
    assert tars.audit_safe("a\udcffb\x00c") == "a\\xffb\\x00c"
    assert tars.audit_safe("\ud800") == "\\ud800"


def test_a_problem_with_a_new_key_ends_the_sample_before_it() -> None:
    # b.txt (a link) sits between a and b.jpg: it belongs to b, the sample that follows it.
    data = raw_tar(
        [
            (member("a.jpg"), b"1"),
            (member("b.txt", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
            (member("b.jpg"), b"2"),
        ]
    )
    assert read_tar(data) == [
        Sample("a", [("a.jpg", b"1")]),
        TarProblem("b.txt", tars.SYMLINK, "b"),
        Sample("b", [("b.jpg", b"2")]),
    ]
