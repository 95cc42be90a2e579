"""Fixtures the pipeline's unit tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.jobs import sample_shards


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of three small shards (two samples each, one portrait per shard)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in sample_shards(shards=3, per_shard=2).items():
        (folder / name).write_bytes(data)
    return folder
