"""``benchmarks/plan_scale.py`` and ``benchmarks/gpu_feed.py`` run (quick settings) and report what
BENCHMARKS.md quotes from their full runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raypipe.config import PipelineConfig
from tests.helpers import load_benchmark

pytestmark = [pytest.mark.isolated]

ROOT = Path(__file__).resolve().parents[2]


def test_plan_scale_quick_plans_every_shard_with_requests_in_flight(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    assert load_benchmark("plan_scale").main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["shards"] for r in report["rows"]] == [100, 300]
    baseline = report["sequential_baseline"]
    assert baseline["requests_in_flight"] == 1 and baseline["ms_per_shard"] >= 20  # one round trip each
    for row in report["rows"]:
        assert 1 <= row["requests_per_shard"] < 2  # the identity of each input, the rest is listings
        assert row["speedup_over_sequential"] > 1


def test_the_plan_scale_figures_are_the_benchmarks() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "plan_scale.json").read_text())
    assert [r["shards"] for r in report["rows"]][-1] >= 10_000 and report["settings"]["latency_ms"] == 20
    text = (ROOT / "BENCHMARKS.md").read_text()
    for row in report["rows"]:
        assert f"| {row['shards']:,} | {row['ms_per_shard']:.2f} ms |" in text
    assert f"{report['sequential_baseline']['ms_per_shard']:.1f} ms" in text


@pytest.mark.slow
def test_gpu_feed_quick_measures_the_stand_in_in_the_real_job(tmp_path: Path) -> None:
    out = tmp_path / "feed.json"
    assert load_benchmark("gpu_feed").main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["ok"] and row["faces_anonymized"] > 0 and row["samples"] == 6
    assert row["gate"]["faces_with_distance"] == row["faces_anonymized"]  # the real gate checked each face
    assert 0 < row["pool_busy_fraction"] <= 1 and row["first_anonymization_after_run_start_s"] > 0


def test_the_gpu_feed_figures_are_the_benchmarks() -> None:
    report = json.loads((ROOT / "benchmarks" / "results" / "gpu_feed.json").read_text())
    text = (ROOT / "BENCHMARKS.md").read_text()
    for row in report["rows"]:
        line = (
            f"| {row['cost_s_per_face']:g} s | {row['actors']} | {row['anonymize_tasks_in_flight']} |"
            f" {row['pool_busy_fraction']:.2f} | {row['cpu_bound']['best_busy_fraction']:.2f} |"
        )
        assert line in text
    default = PipelineConfig().anonymize_tasks_in_flight
    by = {(r["cost_s_per_face"], r["actors"], r["anonymize_tasks_in_flight"]): r for r in report["rows"]}
    assert default == 1 and by[(2.0, 4, 1)]["pool_busy_fraction"] > 1.5 * by[(2.0, 4, 2)]["pool_busy_fraction"]
