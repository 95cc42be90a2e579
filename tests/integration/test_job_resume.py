"""Crash and resume: kill the driver midway, rerun the same command, get the same bytes.

Each job runs as its own process inside a fresh PID namespace (``unshare --pid``), so when the
driver is killed every Ray process it started goes with it: nothing is left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raypipe.layout import OutputLayout, audit_name, done_name
from raypipe.logs import LIBRARY_ENV
from raypipe.pipeline.commit import committed_positions
from raypipe.pipeline.sink import KILL_AFTER_FRAGMENTS_ENV
from tests.integration.jobs import TEST_METHOD, TEST_MODELS, TEST_PIPELINE, sample_shards

pytestmark = [pytest.mark.isolated, pytest.mark.slow]

LEASE_TTL_S = 3
VOLATILE = {"timings", "node"}  # audit columns that legitimately differ between runs


def run_job(config: Path, extra_env: dict[str, str] | None = None, timeout: float = 600) -> tuple[int, str]:
    """``raypipe anonymize --config`` in its own PID namespace: (driver exit status, end of its log)."""
    # The variables raypipe quiets libraries with, if this process set them, would hide what the job does.
    env = {k: v for k, v in os.environ.items() if k not in LIBRARY_ENV} | (extra_env or {})
    raypipe = str(Path(sys.executable).with_name("raypipe"))
    log = Path(f"{config}.log")
    script = f'"{raypipe}" anonymize --config "{config}" --no-progress > "{log}" 2>&1; echo $? > "{config}.rc"'
    subprocess.run(
        ["unshare", "--fork", "--pid", "--mount-proc", "sh", "-c", script], env=env, timeout=timeout, check=False
    )
    return int(Path(f"{config}.rc").read_text()), log.read_text()[-3000:]


def write_config(folder: Path, inputs: Path, output: Path, shards: int = 4) -> Path:
    config = {
        "input": str(inputs / f"part-{{00000..{shards - 1:05d}}}.tar"),
        "output": str(output),
        "models": TEST_MODELS,
        "method": TEST_METHOD,
        # Small batches: many fragments to crash between. A short lease: the killed driver lived in
        # another PID namespace, so only its lease's expiry tells the rerun that it is gone.
        "pipeline": TEST_PIPELINE | {"batch_size": 2, "lease_ttl_s": LEASE_TTL_S},
    }
    path = folder / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def audit_rows(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    for name, data in sample_shards(shards=4, per_shard=5).items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run over the first 4 shards (shared: each job costs tens of seconds here)."""
    folder = tmp_path_factory.mktemp("reference")
    output = folder / "reference"
    code, log = run_job(write_config(folder, inputs, output))
    assert code == 0, log
    return output


def test_a_job_shows_its_own_lines_and_not_the_libraries(reference: Path) -> None:
    # The whole driver log of the reference run: Ray workers' output reaches it too (log_to_driver).
    log = Path(f"{reference}.yaml.log").read_text()
    assert "raypipe run " in log and "samples: 20 accounted for" in log
    for noise in ("[transformers]", "Starting execution of Dataset", "Execution plan of Dataset", "Progress bars"):
        assert noise not in log, noise


def test_killed_driver_then_rerun_gives_the_uninterrupted_result(inputs: Path, reference: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    config = write_config(tmp_path, inputs, crashed)
    code, log = run_job(config, {KILL_AFTER_FRAGMENTS_ENV: "3"})
    assert code == 137, log  # SIGKILL, mid-run

    layout = OutputLayout(str(crashed))
    names = [f"part-{i:05d}.tar" for i in range(4)]
    done = [n for n in names if (crashed / done_name(n)).exists()]
    assert len(done) < 4, "the crash came too late to test anything"
    committed = sum(5 for _ in done) + sum(len(committed_positions(layout, n)[0]) for n in names if n not in done)
    assert committed > 0, "the crash came before anything was committed"

    time.sleep(LEASE_TTL_S + 0.5)  # the killed driver's lease expires
    code, log = run_job(config)
    assert code == 0, log
    runs = sorted((crashed / ".raypipe" / "runs").glob("*.json"))
    rerun = json.loads(runs[-1].read_text())
    assert rerun["samples_processed"] == 20 - committed  # committed work is not redone
    assert rerun["shards_skipped"] == len(done)

    for name in names:
        assert (crashed / name).read_bytes() == (reference / name).read_bytes(), name
        audit = audit_name(name)
        assert audit_rows(crashed / audit) == audit_rows(reference / audit), name
    assert not list((crashed / ".raypipe" / "fragments").glob("*/*.parquet"))  # all folded into shards


def test_driver_memory_does_not_grow_with_the_number_of_shards(inputs: Path, reference: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    code, log = run_job(write_config(tmp_path, inputs, one, shards=1))
    assert code == 0, log
    peaks = {}
    for shards, output in ((1, one), (4, reference)):
        record = json.loads(next((output / ".raypipe" / "runs").glob("*.json")).read_text())
        assert record["shards_done"] == shards
        peaks[shards] = record["driver_peak_rss_mb"]
    print(f"driver peak RSS: 1 shard {peaks[1]} MB, 4 shards {peaks[4]} MB")
    assert peaks[4] < 1.2 * peaks[1], peaks  # 4x the shards, not 4x (nor 2x) the memory
