"""Slim rows: after detection a sample carries names, faces and references, not bytes or pixels; what
is released unchanged is read back from the input at finalize, checked against the bytes first read."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypipe.config import LimitsConfig
from raypipe.io.publish import publish_stream
from raypipe.io.spans import InputChangedError
from raypipe.io.storage import StorageOptions, filesystem
from raypipe.io.tars import Sample, read_tar, tar_bytes
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import RunInfo, commit_fragment, finalize_shard
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.stages import Decode
from raypipe.records import Status

RUN = RunInfo(config_hash="c" * 64, code_version="test", method={})


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "part-00000.tar"
    path.parent.mkdir()
    samples = [Sample(f"k{i}", [(f"k{i}.png", _png(i)), (f"k{i}.json", b'{"i": %d}' % i)]) for i in range(3)]
    path.write_bytes(tar_bytes(samples))
    return path


def _released(shard: Path) -> list:
    tasks = Decode(LimitsConfig())(
        list(shard_tasks(ShardWork(str(shard), shard.name), StorageOptions(), LimitsConfig()))
    )
    for task in tasks:
        task.slim()
        if not task.end_of_shard:
            task.status = Status.NO_FACE
            task.out_members = [task.unchanged(i) for i in range(len(task.members))]
    return tasks


def test_a_slim_sample_carries_no_bytes_or_pixels_and_finalize_writes_the_same_shard(
    shard: Path, tmp_path: Path
) -> None:
    tasks = _released(shard)
    pending = [t for t in tasks if not t.end_of_shard]
    assert all(t.slimmed and all(data == b"" for _, data in t.members) for t in pending)
    assert all(image.rgb is None for t in pending for image in t.images)
    assert max(len(pickle.dumps(t)) for t in pending) < 4096  # each PNG alone is about 200 kB
    layout = OutputLayout(str(tmp_path / "out"))
    commit_fragment(layout, shard.name, tasks, RUN)
    marker = finalize_shard(layout, shard.name, source=str(shard))
    assert (tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes()
    assert marker["released"] == 3


def test_an_input_changed_after_it_was_read_is_refused_at_finalize(shard: Path, tmp_path: Path) -> None:
    tasks = _released(shard)
    layout = OutputLayout(str(tmp_path / "out"))
    commit_fragment(layout, shard.name, tasks, RUN)
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first member's bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(InputChangedError, match=r"part-00000\.tar"):
        finalize_shard(layout, shard.name, source=str(shard))
    assert not (tmp_path / "out" / shard.name).exists()


def test_a_streamed_publish_that_fails_leaves_nothing(tmp_path: Path) -> None:
    fs, path = filesystem(str(tmp_path / "a.tar"), StorageOptions())
    with pytest.raises(RuntimeError), publish_stream(fs, path) as out:
        out.write(b"partial")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with publish_stream(fs, path) as out:
        out.write(tar_bytes([Sample("a", [("a.txt", b"x")])]))
    assert read_tar((tmp_path / "a.tar").read_bytes()) == [Sample("a", [("a.txt", b"x")])]


def test_a_fragment_is_stored_in_row_groups_that_finalize_reads_one_at_a_time(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from raypipe.pipeline.commit import ROW_GROUP_BYTES, fragment_bytes
    from raypipe.pipeline.task import SampleTask

    member = ROW_GROUP_BYTES // 3 + 1
    tasks = []
    for seq in range(7):
        task = SampleTask("in.tar", "in.tar", seq, f"k{seq}", [(f"k{seq}.bin", bytes([seq]) * member)], "")
        task.status, task.out_members = Status.NO_FACE, list(task.members)
        tasks.append(task)
    parquet = pq.ParquetFile(io.BytesIO(fragment_bytes(tasks, RUN)))
    groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert groups == [3, 3, 1]  # a group closes once it holds ROW_GROUP_BYTES of member data


def test_members_read_back_at_compose_are_dropped_again_before_the_write(shard: Path) -> None:
    from raypipe.io.spans import SpanReader

    (task, *_) = _released(shard)
    with SpanReader(str(shard), StorageOptions()) as reader:
        task.load_members([0], reader)  # what compose does to re-decode the image
    assert task.members[0][1] == _png(0)
    task.slim()  # compose's last step: the bytes go no further than this stage
    assert all(data == b"" for _, data in task.members) and task.unchanged(0)[1] == task.refs[0]
