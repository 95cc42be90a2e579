"""docs/FAULTS.md stays honest: every limit with its real default, every fault hook."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from raypipe.config import LimitsConfig, PipelineConfig
from raypipe.io.storage import StorageOptions
from raypipe.pipeline import faults

DOC = (Path(__file__).parents[2] / "docs" / "FAULTS.md").read_text()


def documented_default(key: str) -> str:
    for line in DOC.splitlines():
        if line.startswith(f"| `{key}` |"):
            return line.split("|")[2].strip().split()[0].strip("`")
    raise AssertionError(f"{key} is not in the limits table of docs/FAULTS.md")


@pytest.mark.parametrize(
    ("section", "cls", "names"),
    [
        ("limits", LimitsConfig, [f.name for f in dataclasses.fields(LimitsConfig)]),
        ("pipeline", PipelineConfig, ["stall_timeout_s"]),
        ("storage", StorageOptions, ["max_attempts", "connect_timeout_s", "read_timeout_s"]),
    ],
)
def test_every_limit_is_documented_with_its_default(section: str, cls: type, names: list[str]) -> None:
    defaults = cls()
    for name in names:
        assert float(documented_default(f"{section}.{name}")) == float(getattr(defaults, name)), name


def test_every_fault_hook_is_documented() -> None:
    for name in faults.HOOKS:
        assert f"`{name}=" in DOC, name
