from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from raypipe.io.cache import MARKER, default_cache_dir, materialize


@pytest.fixture
def memory_models():
    """A folder and a single file on fsspec's memory filesystem, removed afterwards."""
    root = f"models-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"/{root}/tiny/config.json", b'{"dim": 8}')
    fs.pipe_file(f"/{root}/tiny/unet/weights.safetensors", b"\x00" * 1000)
    fs.pipe_file(f"/{root}/tiny2/other.json", b"sibling, must not be copied")
    fs.pipe_file(f"/{root}/single.onnx", b"onnx-bytes")
    yield root
    fs.rm(f"/{root}", recursive=True)


@pytest.fixture
def counted_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_get_file, real_find = MemoryFileSystem.get_file, MemoryFileSystem.find

    def get_file(self, rpath, lpath, *args, **kwargs):
        calls.append(f"get {rpath}")
        return real_get_file(self, rpath, lpath, *args, **kwargs)

    def find(self, path, *args, **kwargs):
        calls.append(f"find {path}")
        return real_find(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "get_file", get_file)
    monkeypatch.setattr(MemoryFileSystem, "find", find)
    return calls


def test_local_path_is_returned_unchanged(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    assert materialize(str(weights), cache_dir=str(tmp_path / "cache")) == str(weights)
    assert materialize(f"file://{weights}") == str(weights)
    assert not (tmp_path / "cache").exists()


def test_missing_local_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        materialize(str(tmp_path / "nope"))


def test_folder_prefix_is_downloaded_once(tmp_path: Path, memory_models: str, counted_downloads) -> None:
    cache = tmp_path / "cache"
    local = materialize(f"memory://{memory_models}/tiny", cache_dir=str(cache))
    assert os.path.basename(local) == "tiny"
    assert Path(local, "config.json").read_bytes() == b'{"dim": 8}'
    assert Path(local, "unet", "weights.safetensors").stat().st_size == 1000
    assert sorted(os.listdir(local)) == ["config.json", "unet"]
    assert Path(local).parent.joinpath(MARKER).is_file()
    downloads = list(counted_downloads)
    assert len([c for c in downloads if c.startswith("get ")]) == 2

    again = materialize(f"memory://{memory_models}/tiny/", cache_dir=str(cache))
    assert again == local
    assert counted_downloads == downloads  # no listing, no download
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [Path(local).parent.name]


def test_single_file_keeps_its_name(tmp_path: Path, memory_models: str) -> None:
    local = materialize(f"memory://{memory_models}/single.onnx", cache_dir=str(tmp_path))
    assert os.path.basename(local) == "single.onnx"
    assert Path(local).read_bytes() == b"onnx-bytes"


def test_cache_dir_defaults_to_environment(tmp_path: Path, memory_models: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYPIPE_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == str(tmp_path / "env-cache")
    local = materialize(f"memory://{memory_models}/single.onnx")
    assert local.startswith(str(tmp_path / "env-cache") + os.sep)
    monkeypatch.delenv("RAYPIPE_CACHE")
    assert default_cache_dir() == os.path.expanduser("~/.cache/raypipe/models")


def test_interrupted_download_leaves_nothing_that_looks_complete(
    tmp_path: Path, memory_models: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get_file = MemoryFileSystem.get_file
    seen: list[str] = []

    def dies_on_second_file(self, rpath, lpath, *args, **kwargs):
        seen.append(rpath)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real_get_file(self, rpath, lpath, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "get_file", dies_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        materialize(f"memory://{memory_models}/tiny", cache_dir=str(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    monkeypatch.setattr(MemoryFileSystem, "get_file", real_get_file)
    local = materialize(f"memory://{memory_models}/tiny", cache_dir=str(tmp_path))
    assert Path(local, "unet", "weights.safetensors").stat().st_size == 1000


def test_concurrent_workers_download_once(tmp_path: Path, memory_models: str, counted_downloads) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(materialize(f"memory://{memory_models}/tiny", cache_dir=str(tmp_path)))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(set(results)) == 1 and len(results) == 4
    assert len([c for c in counted_downloads if c.startswith("get ")]) == 2


def test_missing_remote_object_is_an_error(tmp_path: Path, memory_models: str) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        materialize(f"memory://{memory_models}/no-such-model", cache_dir=str(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
