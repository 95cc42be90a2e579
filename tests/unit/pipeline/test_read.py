"""The read stage turns every input sample into exactly one task, whatever the shard holds."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from raypipe.config import LimitsConfig
from raypipe.io.storage import StorageOptions
from raypipe.pipeline.intervals import Positions
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.task import SampleTask


def raw_tar(entries: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """(name, data or None for a link, tar type) per member, written with plain tarfile."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if data is None:
                info.linkname = "/etc/passwd"
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tasks_of(tmp_path: Path, data: bytes, committed: frozenset[int] = frozenset(), **limits: int) -> list[SampleTask]:
    path = tmp_path / "part-00000.tar"
    path.write_bytes(data)
    work = ShardWork(str(path), path.name, committed)
    return list(shard_tasks(work, StorageOptions(), LimitsConfig(**limits)))


def outcome(task: SampleTask) -> tuple[int, str, str | None, str | None]:
    return task.seq, task.key, task.status.value if task.status else None, task.error


REG, SYM = tarfile.REGTYPE, tarfile.SYMTYPE


def test_a_member_that_is_not_read_fails_the_sample_of_its_key(tmp_path: Path) -> None:
    tasks = tasks_of(
        tmp_path,
        raw_tar([("a.jpg", b"1", REG), ("a.txt", None, SYM), ("a.cls", b"2", REG), ("b.jpg", b"3", REG)]),
    )
    assert [outcome(t) for t in tasks[:-1]] == [
        (0, "a", "failed", "member 'a.txt' not read: symlink"),
        (1, "b", None, None),
    ]
    assert tasks[0].members == [("a.jpg", b"1"), ("a.cls", b"2")]  # recorded, never released
    assert tasks[-1].end_of_shard and tasks[-1].seq == 2


def test_members_that_are_all_unreadable_are_one_sample(tmp_path: Path) -> None:
    tasks = tasks_of(tmp_path, raw_tar([("x.jpg", None, SYM), ("x.txt", None, SYM), ("y.jpg", b"1", REG)]))
    assert [outcome(t) for t in tasks[:-1]] == [
        (0, "x", "failed", "member 'x.jpg' not read: symlink; member 'x.txt' not read: symlink"),
        (1, "y", None, None),
    ]


def test_a_key_that_comes_back_later_fails_the_later_sample(tmp_path: Path) -> None:
    tasks = tasks_of(tmp_path, raw_tar([("a.jpg", b"1", REG), ("b.jpg", b"2", REG), ("a.txt", b"3", REG)]))
    assert [t.status for t in tasks[:2]] == [None, None]
    assert tasks[2].key == "a" and tasks[2].status is not None and tasks[2].status.value == "failed"
    assert "already used by an earlier sample" in (tasks[2].error or "")


def test_an_oversized_member_is_named_with_the_limit(tmp_path: Path) -> None:
    tasks = tasks_of(tmp_path, raw_tar([("a.bin", b"x" * 100, REG), ("a.txt", b"ok", REG)]), max_member_bytes=50)
    assert tasks[0].status is not None and tasks[0].status.value == "failed"
    assert tasks[0].error == (
        "member 'a.bin' not read: over_limit (100 bytes, over the limit of 50; limits.max_member_bytes)"
    )
    assert tasks[0].members == [("a.txt", b"ok")]


def test_damage_fails_the_interrupted_sample_and_ends_the_shard(tmp_path: Path) -> None:
    data = raw_tar([("a.jpg", b"1", REG), ("b.jpg", b"2" * 2000, REG)])
    tasks = tasks_of(tmp_path, data[: 3 * 512 + 700])  # cut inside b.jpg's data
    assert [outcome(t)[:3] for t in tasks[:-1]] == [(0, "a", None), (1, "b", "failed")]
    assert "part-00000.tar: unreadable tar while reading sample 'b': unexpected end of data" in (tasks[1].error or "")
    assert tasks[-1].end_of_shard and tasks[-1].seq == 2


def test_not_a_tar_at_all_is_one_failed_sample(tmp_path: Path) -> None:
    tasks = tasks_of(tmp_path, b"\x07" * 3000)
    assert [outcome(t)[:3] for t in tasks[:-1]] == [(0, "", "failed")]
    assert "unreadable tar" in (tasks[0].error or "")


def test_committed_samples_are_skipped_and_positions_stay_the_same(tmp_path: Path) -> None:
    data = raw_tar([("a.jpg", b"1", REG), ("b.txt", None, SYM), ("c.jpg", b"2", REG)])
    everything = tasks_of(tmp_path, data)
    resumed = tasks_of(tmp_path, data, committed=Positions({0}))
    assert [outcome(t) for t in resumed] == [outcome(t) for t in everything[1:]]


def one_sample_tar(members: int) -> bytes:
    """One sample of ``members`` tiny members (k.0, k.1, ...), written without tarfile's per-member cost."""
    blocks = []
    for index in range(members):
        info = tarfile.TarInfo(f"k.{index}")
        info.size = 1
        blocks.append(info.tobuf(format=tarfile.GNU_FORMAT) + b"x" + bytes(511))
    return b"".join(blocks) + bytes(2 * tarfile.BLOCKSIZE)


def test_the_cost_of_a_sample_grows_linearly_with_its_member_count(tmp_path: Path) -> None:
    import time

    def seconds(members: int) -> float:
        data = one_sample_tar(members)
        started = time.perf_counter()
        (task, end) = tasks_of(tmp_path, data)
        elapsed = time.perf_counter() - started
        assert len(task.members) == members and task.status is None and end.end_of_shard
        return elapsed

    small, large = seconds(5_000), seconds(40_000)
    # 8x the members: about 8x the time when linear, 64x when quadratic (40,000 members took 23 s).
    assert large < 20 * small + 0.5, (small, large)
    assert large < 5, large


def test_names_no_reader_agrees_on_fail_their_sample_with_a_printable_key(tmp_path: Path) -> None:
    tasks = tasks_of(
        tmp_path,
        raw_tar([("a.jpg", b"1", REG), ("a.\udcff", b"2", REG), ("b\udcfe.jpg", b"3", REG), ("c.jpg", b"4", REG)]),
    )
    assert [outcome(t) for t in tasks[:-1]] == [
        (0, "a", "failed", "member 'a.\\udcff' not read: undecodable_name"),
        (1, "b\\xfe", "failed", "member 'b\\udcfe.jpg' not read: undecodable_name"),
        (2, "c", None, None),
    ]
    assert tasks[0].members == [("a.jpg", b"1")] and tasks[0].input_sha256
