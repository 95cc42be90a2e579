from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from raypipe.io.shards import MissingShardsError, ShardSpecError, expand_braces, expand_shards, shard_name


@pytest.fixture
def memory_root():
    """A unique folder on fsspec's in-process memory filesystem, removed afterwards."""
    root = f"shards-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


def touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


# --- brace expansion ---------------------------------------------------------------------------


def test_numeric_range_keeps_zero_padding() -> None:
    names = expand_braces("data-{00000..00099}.tar")
    assert len(names) == 100
    assert names[0] == "data-00000.tar"
    assert names[42] == "data-00042.tar"
    assert names[-1] == "data-00099.tar"


def test_range_without_padding_and_padding_from_either_end() -> None:
    assert expand_braces("x{8..11}") == ["x8", "x9", "x10", "x11"]
    assert expand_braces("x{8..010}") == ["x008", "x009", "x010"]
    assert expand_braces("x{3..1}") == ["x3", "x2", "x1"]


def test_alternatives_and_empty_alternative() -> None:
    assert expand_braces("{train,val}/a.tar") == ["train/a.tar", "val/a.tar"]
    assert expand_braces("a{,-extra}.tar") == ["a.tar", "a-extra.tar"]


def test_multiple_and_nested_braces() -> None:
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_braces("{x,y{01..02}}.tar") == ["x.tar", "y01.tar", "y02.tar"]


def test_no_braces_is_returned_as_is() -> None:
    assert expand_braces("s3://b/one.tar") == ["s3://b/one.tar"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("data-{0..3.tar", "without a matching"),
        ("data-0..3}.tar", "without a matching"),
        ("data-{}.tar", "neither"),
        ("data-{abc}.tar", "neither"),
        ("data-{a..e}.tar", "neither"),
        ("data-{1..2..3}.tar", "neither"),
    ],
)
def test_malformed_braces_are_errors(pattern: str, message: str) -> None:
    with pytest.raises(ShardSpecError, match=message):
        expand_braces(pattern)


def test_huge_expansion_is_refused() -> None:
    with pytest.raises(ShardSpecError, match="more than"):
        expand_braces("{0..999}{0..999}{0..9}")


# --- listing on a local folder -----------------------------------------------------------------


def test_brace_pattern_on_local_folder(tmp_path: Path) -> None:
    touch(tmp_path, "data-00000.tar", "data-00001.tar", "data-00002.tar")
    shards = expand_shards(str(tmp_path / "data-{00000..00002}.tar"))
    assert shards == [str(tmp_path / f"data-0000{i}.tar") for i in range(3)]


def test_many_spelled_out_names_list_the_folder_once(memory_root: str, monkeypatch) -> None:
    fs = fsspec.filesystem("memory")
    for i in range(30):
        fs.pipe_file(f"/{memory_root}/s-{i:03d}.tar", b"x")
    calls: list[str] = []
    real_ls, real_info = MemoryFileSystem.ls, MemoryFileSystem.info

    def counting_ls(self, path, *args, **kwargs):
        calls.append("ls")
        return real_ls(self, path, *args, **kwargs)

    def counting_info(self, path, *args, **kwargs):
        calls.append("info")
        return real_info(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "ls", counting_ls)
    monkeypatch.setattr(MemoryFileSystem, "info", counting_info)
    assert len(expand_shards(f"memory://{memory_root}/s-{{000..029}}.tar")) == 30
    assert calls == ["ls"]
    with pytest.raises(MissingShardsError) as caught:
        expand_shards(f"memory://{memory_root}/s-{{000..031}}.tar")
    assert caught.value.missing == [f"memory://{memory_root}/s-030.tar", f"memory://{memory_root}/s-031.tar"]


def test_glob_keeps_only_tar_files_sorted(tmp_path: Path) -> None:
    touch(tmp_path, "b.tar", "a.tar", "a.json", "c.tar.idx", "sub/d.tar")
    (tmp_path / "dir.tar").mkdir()
    assert expand_shards(str(tmp_path / "*")) == [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    assert expand_shards(str(tmp_path / "**" / "*.tar")) == [
        str(tmp_path / "a.tar"),
        str(tmp_path / "b.tar"),
        str(tmp_path / "sub" / "d.tar"),
    ]


def test_question_mark_and_character_class_globs(tmp_path: Path) -> None:
    touch(tmp_path, "p-1.tar", "p-2.tar", "p-3.tar", "p-10.tar")
    assert expand_shards(str(tmp_path / "p-?.tar")) == [str(tmp_path / f"p-{i}.tar") for i in (1, 2, 3)]
    assert expand_shards(str(tmp_path / "p-[13].tar")) == [
        str(tmp_path / "p-1.tar"),
        str(tmp_path / "p-3.tar"),
    ]


def test_braces_and_globs_together(tmp_path: Path) -> None:
    touch(tmp_path, "train/x-0.tar", "train/x-1.tar", "val/y-0.tar", "test/z.tar")
    shards = expand_shards(str(tmp_path / "{train,val}" / "*.tar"))
    assert [shard_name(s) for s in shards] == ["x-0.tar", "x-1.tar", "y-0.tar"]


def test_several_specs_are_merged_and_deduplicated(tmp_path: Path) -> None:
    touch(tmp_path, "a.tar", "b.tar", "c.tar")
    shards = expand_shards([str(tmp_path / "{a,b}.tar"), str(tmp_path / "*.tar")])
    assert shards == [str(tmp_path / n) for n in ("a.tar", "b.tar", "c.tar")]


def test_relative_and_file_uri_specs_give_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    touch(tmp_path, "in/a.tar")
    monkeypatch.chdir(tmp_path)
    assert expand_shards("in/a.tar") == [str(tmp_path / "in" / "a.tar")]
    assert expand_shards(f"file://{tmp_path}/in/*.tar") == [str(tmp_path / "in" / "a.tar")]


def test_missing_spelled_out_shards_are_named(tmp_path: Path) -> None:
    touch(tmp_path, "data-0.tar", "data-2.tar")
    with pytest.raises(MissingShardsError, match=r"data-1\.tar") as caught:
        expand_shards(str(tmp_path / "data-{0..3}.tar"))
    assert caught.value.missing == [str(tmp_path / "data-1.tar"), str(tmp_path / "data-3.tar")]
    assert "2 shard(s) do not exist" in str(caught.value)


def test_nothing_matching_names_the_spec(tmp_path: Path) -> None:
    touch(tmp_path, "notes.txt")
    spec = str(tmp_path / "*.tar")
    with pytest.raises(ShardSpecError, match=r"matches no \.tar or \.parquet shards") as caught:
        expand_shards(spec)
    assert spec in str(caught.value)


def test_spelled_out_non_tar_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "a.zip")
    with pytest.raises(ShardSpecError, match=r"a\.zip is a file; INPUT names \.tar or \.parquet shards or folders"):
        expand_shards(str(tmp_path / "a.zip"))
    with pytest.raises(ShardSpecError, match=r"b\.zip does not exist"):
        expand_shards(str(tmp_path / "b.zip"))


def test_a_folder_stands_for_every_tar_directly_inside_it(tmp_path: Path) -> None:
    for name in ("b.tar", "a.tar", "notes.txt", "sub/c.tar"):
        touch(tmp_path, name)
    expected = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    assert expand_shards(str(tmp_path)) == expected
    assert expand_shards(str(tmp_path) + "/") == expected
    assert expand_shards([str(tmp_path), str(tmp_path / "a.tar")]) == expected  # no duplicates
    touch(tmp_path, "jpgs/x.jpg")
    with pytest.raises(ShardSpecError, match=r"jpgs holds no \.tar shards \(--input-format files reads a folder"):
        expand_shards(str(tmp_path / "jpgs"), input_format="webdataset")
    assert expand_shards(str(tmp_path / "jpgs")) == [f"{tmp_path / 'jpgs'}#%2E.files"]  # auto: a tree of files
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardSpecError, match=r"empty holds no files"):
        expand_shards(str(tmp_path / "empty"))


def test_tables_are_shards_and_tars_come_first_where_both_lie(tmp_path: Path) -> None:
    touch(tmp_path, "tables/train-1.parquet", "tables/train-0.parquet", "tables/README.md")
    tables = [str(tmp_path / "tables" / f"train-{i}.parquet") for i in (0, 1)]
    assert expand_shards(str(tmp_path / "tables")) == tables
    assert expand_shards(str(tmp_path / "tables/*.parquet")) == tables
    assert expand_shards(str(tmp_path / "tables/train-1.parquet")) == tables[1:]
    # img2dataset's webdataset output: a .parquet of metadata beside every tar. auto reads the tars.
    touch(tmp_path, "wds/00000.tar", "wds/00000.parquet")
    assert expand_shards(str(tmp_path / "wds")) == [str(tmp_path / "wds/00000.tar")]
    assert expand_shards(str(tmp_path / "wds/*")) == [str(tmp_path / "wds/00000.tar")]
    assert expand_shards(str(tmp_path / "wds"), input_format="parquet") == [str(tmp_path / "wds/00000.parquet")]
    assert expand_shards(str(tmp_path / "wds/00000.parquet")) == [str(tmp_path / "wds/00000.parquet")]  # named
    with pytest.raises(ShardSpecError, match=r"tables holds no \.tar shards"):
        expand_shards(str(tmp_path / "tables"), input_format="webdataset")
    with pytest.raises(ShardSpecError, match="input format 'csv' is not one of auto, webdataset, parquet"):
        expand_shards(str(tmp_path / "tables"), input_format="csv")


def test_empty_spec_list_is_an_error() -> None:
    with pytest.raises(ShardSpecError, match="no input shards"):
        expand_shards([])


def test_remote_uris_keep_their_scheme(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    root = memory_root
    for name in ("a-0.tar", "a-1.tar", "b.tar", "b.json"):
        fs.pipe_file(f"/{root}/{name}", b"x")
    assert expand_shards(f"memory://{root}/a-{{0..1}}.tar") == [
        f"memory://{root}/a-0.tar",
        f"memory://{root}/a-1.tar",
    ]
    assert expand_shards(f"memory://{root}/*") == [
        f"memory://{root}/a-0.tar",
        f"memory://{root}/a-1.tar",
        f"memory://{root}/b.tar",
    ]


def test_shard_name_is_the_basename() -> None:
    assert shard_name("s3://bucket/in/data-00007.tar") == "data-00007.tar"
    assert shard_name("/data/in/x.tar") == "x.tar"
