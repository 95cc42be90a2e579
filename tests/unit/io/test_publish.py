from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from raypipe.io import publish
from raypipe.io.publish import delete, exists, publish_bytes, read_bytes


@pytest.fixture
def local_fs() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("file")


@pytest.fixture
def memory_root():
    root = f"/publish-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    delays: list[float] = []
    monkeypatch.setattr("time.sleep", delays.append)
    return delays


def test_local_publish_creates_folders_and_leaves_no_temp_files(tmp_path: Path, local_fs) -> None:
    target = tmp_path / "out" / "audit" / "shard-0.json"
    publish_bytes(local_fs, str(target), b'{"ok": true}')
    assert target.read_bytes() == b'{"ok": true}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["shard-0.json"]


def test_local_publish_replaces_and_uses_normal_permissions(tmp_path: Path, local_fs) -> None:
    target = tmp_path / "x.tar"
    publish_bytes(local_fs, str(target), b"old")
    publish_bytes(local_fs, str(target), b"new")
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


class _FailingHandle:
    """Writes half of the data, then fails like a full disk."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def fileno(self) -> int:
        return self._handle.fileno()

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        self._handle.flush()


def test_failure_during_local_write_leaves_old_file_and_no_temp(
    tmp_path: Path, local_fs, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.tar"
    publish_bytes(local_fs, str(target), b"complete old version")
    real_fdopen = os.fdopen
    monkeypatch.setattr(publish.os, "fdopen", lambda fd, mode: _FailingHandle(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        publish_bytes(local_fs, str(target), b"0123456789" * 1000)
    assert target.read_bytes() == b"complete old version"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tar"]


def test_failure_before_rename_never_creates_the_final_name(
    tmp_path: Path, local_fs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(publish.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        publish_bytes(local_fs, str(tmp_path / "new.tar"), b"data")
    assert list(tmp_path.iterdir()) == []


def test_object_store_publish_is_one_pipe_file_of_the_whole_object(
    memory_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = fsspec.filesystem("memory")
    calls: list[tuple[str, bytes]] = []
    real_pipe_file = MemoryFileSystem.pipe_file

    def spy(self, path, value, *args, **kwargs):
        calls.append((path, value))
        return real_pipe_file(self, path, value, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", spy)
    data = os.urandom(3 * 2**20)
    publish_bytes(fs, f"{memory_root}/out/a.tar", data)
    assert calls == [(f"{memory_root}/out/a.tar", data)]
    assert read_bytes(fs, f"{memory_root}/out/a.tar") == data


def test_object_store_publish_retries_transient_errors(
    memory_root: str, monkeypatch: pytest.MonkeyPatch, no_sleep: list[float]
) -> None:
    fs = fsspec.filesystem("memory")
    failures = [ConnectionResetError(104, "Connection reset by peer")]
    real_pipe_file = MemoryFileSystem.pipe_file

    def flaky(self, path, value, *args, **kwargs):
        if failures:
            raise failures.pop()
        return real_pipe_file(self, path, value, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", flaky)
    publish_bytes(fs, f"{memory_root}/a.json", b"{}")
    assert read_bytes(fs, f"{memory_root}/a.json") == b"{}"
    assert len(no_sleep) == 1


def test_exists_read_and_delete(tmp_path: Path, local_fs, memory_root: str) -> None:
    for fs, path in ((local_fs, str(tmp_path / "m.json")), (fsspec.filesystem("memory"), f"{memory_root}/m")):
        assert not exists(fs, path)
        publish_bytes(fs, path, b"marker")
        assert exists(fs, path)
        assert read_bytes(fs, path) == b"marker"
        delete(fs, path)
        assert not exists(fs, path)
        delete(fs, path)  # missing is fine


def test_read_of_missing_object_is_not_retried(tmp_path: Path, local_fs, no_sleep: list[float]) -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes(local_fs, str(tmp_path / "missing"))
    assert no_sleep == []


def test_s3_publish_asks_for_a_single_put_up_to_5_gib(memory_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # s3fs switches to multipart above 2 x chunksize (100 MiB by default): raypipe raises that bound.
    class FakeS3(MemoryFileSystem):
        protocol = ("s3", "s3a")

    seen: list[dict] = []
    monkeypatch.setattr(FakeS3, "pipe_file", lambda self, path, value, **kwargs: seen.append(kwargs))
    publish_bytes(FakeS3(), f"{memory_root}/a.tar", b"x")
    assert seen == [{"chunksize": 5 * 2**30}]
