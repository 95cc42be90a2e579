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


def test_every_test_the_doc_names_exists() -> None:
    """A row of FAULTS.md is a claim; the test it names must exist (a name ending in ``...`` is a prefix)."""
    import re

    tests = Path(__file__).parents[1]
    named = re.findall(r"`((?:tests/[\w/]+/)?(test_\w+\.py))::(test_\w+)(\.\.\.)?`", DOC)
    assert len(named) > 20
    for path, file, name, prefix in named:
        candidates = [tests.parent / path] if path.startswith("tests/") else list(tests.rglob(file))
        assert candidates and all(c.is_file() for c in candidates), path
        sources = "".join(c.read_text() for c in candidates)
        pattern = rf"def {name}" + ("" if prefix else r"\(")
        assert re.search(pattern, sources), f"{path}::{name} is not a test"
