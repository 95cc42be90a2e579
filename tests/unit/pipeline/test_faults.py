"""Fault-injection hooks are inert unless their variable is set, and fire once per marker folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.pipeline import faults


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in faults.HOOKS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_hooks_are_inert_without_their_variables(clean: pytest.MonkeyPatch) -> None:
    assert faults.fault_env() == {}
    for batch in range(1, 5):
        faults.on_anonymize_batch(batch)  # neither exits nor hangs


def test_a_fault_fires_once_per_marker_folder(clean: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean.setenv(faults.ONCE_DIR, str(tmp_path))
    assert faults.claim("x") and not faults.claim("x")
    assert faults.claim("y")


def test_a_hook_reaches_workers_through_the_fault_environment(clean: pytest.MonkeyPatch) -> None:
    clean.setenv(faults.HANG_ANONYMIZE_AT_BATCH, "3")
    assert faults.fault_env() == {faults.HANG_ANONYMIZE_AT_BATCH: "3"}
    assert faults.env_count(faults.HANG_ANONYMIZE_AT_BATCH) == 3


def test_a_bad_count_is_refused_by_name(clean: pytest.MonkeyPatch) -> None:
    clean.setenv(faults.KILL_ANONYMIZE_AT_BATCH, "soon")
    with pytest.raises(ValueError, match=faults.KILL_ANONYMIZE_AT_BATCH):
        faults.env_count(faults.KILL_ANONYMIZE_AT_BATCH)


def test_a_slow_gpu_stage_sleeps_every_batch(clean: pytest.MonkeyPatch) -> None:
    clean.setenv(faults.SLOW_ANONYMIZE_S, "1")
    slept: list[float] = []
    clean.setattr(faults.time, "sleep", slept.append)
    for batch in range(1, 4):
        faults.on_anonymize_batch(batch)
    assert slept == [1, 1, 1]
