"""Quarantine copies of a shard that repeats a key: every held-back original kept, the shard finalized.

The shard holds ``a``, ``b``, ``a`` again (not contiguous): the read stage fails the later ``a``, the first
``a`` fails to decode, ``b`` is released. Both ``a`` samples are held back, side by side in the quarantine
tar, where a reader would merge two samples of one key; before the fix, writing that tar raised on every
run, so the shard never finalized.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raypipe.config import AuditConfig, LimitsConfig, MethodConfig, ModelsConfig
from raypipe.io.storage import StorageOptions
from raypipe.io.tars import Sample, read_tar, tar_bytes
from raypipe.layout import OutputLayout
from raypipe.pipeline.commit import QUARANTINE_NOTE, RunInfo, commit_fragment, finalize_shard
from raypipe.pipeline.read import ShardWork, shard_tasks
from raypipe.pipeline.stages import Anonymize, Compose, Decode

SHARD = [
    Sample("a", [("a.jpg", b"not a jpeg: fails at decode"), ("a.json", b'{"n": 1}')]),
    Sample("b", [("b.txt", b"released as it is")]),
    Sample("a", [("a.txt", b"the same key again"), ("a.json", b'{"n": 2}')]),
    Sample("a_seq2", [("a_seq2.txt", b"a real key that looks like a renamed one")]),
]


@pytest.fixture(scope="module")
def anonymize() -> Anonymize:
    models = ModelsConfig(preset="tiny", analyzer="dlib", device="cpu")
    return Anonymize(models, MethodConfig(num_steps=2, face_size=128), LimitsConfig(), detect=True).ready()


def run_shard(shard: Path, out: Path, held: Path, anonymize: Anonymize) -> dict[str, object]:
    """read -> decode -> anonymize -> compose -> commit -> finalize, in this process, as the job does."""
    layout, quarantine = OutputLayout(str(out)), OutputLayout(str(held))
    tasks = list(shard_tasks(ShardWork(str(shard), shard.name), StorageOptions(), LimitsConfig()))
    tasks = Compose(AuditConfig()).ready()(anonymize(Decode(LimitsConfig())(tasks)))
    run = RunInfo(config_hash="c" * 64, code_version="test", method={}, quarantine=quarantine)
    commit_fragment(layout, shard.name, tasks, run)
    return finalize_shard(layout, shard.name, quarantine, source=str(shard))


def test_a_repeated_key_fails_its_sample_and_the_quarantine_keeps_every_original(
    tmp_path: Path, anonymize: Anonymize
) -> None:
    shard = tmp_path / "in" / "part-00000.tar"
    shard.parent.mkdir()
    shard.write_bytes(tar_bytes(SHARD))
    marker = run_shard(shard, tmp_path / "out", tmp_path / "held", anonymize)

    assert marker["counts"] == {"failed": 2, "no_face": 2}
    released = read_tar((tmp_path / "out" / shard.name).read_bytes())
    assert [s.key for s in released] == ["b", "a_seq2"]  # type: ignore[union-attr]
    held = read_tar((tmp_path / "held" / shard.name).read_bytes())
    assert all(isinstance(s, Sample) for s in held)
    keys = [s.key for s in held]  # type: ignore[union-attr]
    assert len(keys) == 2 and keys[0] == "a" and keys[1] not in {"a", "b", "a_seq2"}  # no reader merges them
    first, second = held  # type: ignore[misc]
    assert first.members[:-1] == SHARD[0].members  # the first keeps its names
    assert [data for _, data in second.members[:-1]] == [data for _, data in SHARD[2].members]  # every byte kept
    notes = [json.loads(s.members[-1][1]) for s in held]  # type: ignore[union-attr]
    assert all(s.members[-1][0].endswith(QUARANTINE_NOTE) for s in held)  # type: ignore[union-attr]
    assert notes[0]["key"] == notes[1]["key"] == "a"
    assert notes[1]["members"] == ["a.txt", "a.json"] and notes[1]["seq"] == 2  # the real names and position
    assert "already used by an earlier sample" in notes[1]["error"]
