"""``benchmarks/pipeline_cpu.py`` runs the real job against its baselines and reports what BENCHMARKS.md quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.isolated, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_benchmark_compares_the_job_with_a_tar_copy_at_every_scale(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "pipeline_cpu.py"), "--shards", "1", "--per-shard", "6"]
    command += ["--image-size", "64", "--scales", "1", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["shards"] for r in report["rows"]] == [1, 2]
    for row in report["rows"]:
        assert row["samples"] == 6 * row["shards"]
        assert row["tar_copy_s"] > 0 and row["serial_decode_detect_s"] > 0 and row["job_wall_s"] > 0
        assert 0 < row["throughput_ratio_vs_tar_copy"] < 1  # the job does more than copy bytes
        assert row["driver_peak_rss_mb"] > 0
        assert row["step_seconds_summed"]["detect"] > 0  # every image was looked at
    assert set(report["fits"]) == {"tar_copy_s", "serial_decode_detect_s", "job_wall_s"}
    assert set(report["marginal_throughput_ratio"]) == {"job_vs_tar_copy", "job_vs_serial_decode_detect"}
    assert report["driver_peak_rss_mb"]["max"] >= report["driver_peak_rss_mb"]["min"] > 0
