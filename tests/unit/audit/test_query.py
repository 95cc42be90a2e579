"""``raypipe audit query``: every documented one-liner answers on a run built by hand, over both tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raypipe.audit.query import EXAMPLES, query
from raypipe.cli import main

from .conftest import SHARDS, sample_key, shard_contents, write_shard


@pytest.fixture
def output(tmp_path: Path) -> str:
    """Two finished shards (anonymized, no_face, quarantined each); shard 0's face turned its head 12.5
    degrees and needed three attempts."""
    root = tmp_path / "out"
    root.mkdir()
    for index, shard in enumerate(SHARDS):
        records, samples = shard_contents(index)
        if index == 0:
            records[0]["faces"][0] |= {"yaw_change": 12.5, "pitch_change": -1.0, "roll_change": 0.5, "attempts": 3}
        write_shard(root, shard, records, samples)
    return str(root)


def test_samples_per_status(output: str) -> None:
    rows = query(output, EXAMPLES["samples per status"]).to_pylist()
    assert rows == [
        {"status": "anonymized", "samples": 2},
        {"status": "no_face", "samples": 2},
        {"status": "quarantined", "samples": 2},
    ]


def test_quarantined_keys_with_their_reasons(output: str) -> None:
    rows = query(output, EXAMPLES["quarantined keys with their reasons"]).to_pylist()
    assert [r["key"] for r in rows] == [sample_key(0, 2), sample_key(1, 2)]
    assert {r["error_step"] for r in rows} == {"verify"} and all("re-identifies" in r["error"] for r in rows)


def test_faces_whose_pose_changed_by_more_than_10_degrees(output: str) -> None:
    rows = query(output, EXAMPLES["faces whose head pose changed by more than 10 degrees"]).to_pylist()
    assert rows == [
        {"key": sample_key(0, 0), "face_index": 0, "yaw_change": 12.5, "pitch_change": -1.0, "roll_change": 0.5}
    ]


def test_faces_that_needed_retries(output: str) -> None:
    rows = query(output, EXAMPLES["faces that needed retries, or were obscured"]).to_pylist()
    assert rows == [{"status": "anonymized", "faces": 1, "most_attempts": 3}]


def test_the_faces_table_carries_its_sample(output: str) -> None:
    rows = query(output, "SELECT key, sample_status, status, distance FROM faces ORDER BY key").to_pylist()
    assert [(r["sample_status"], r["status"]) for r in rows] == [
        ("anonymized", "anonymized"),
        ("quarantined", "reidentified"),
        ("anonymized", "anonymized"),
        ("quarantined", "reidentified"),
    ]


def test_an_empty_output_has_empty_tables(tmp_path: Path) -> None:
    assert query(str(tmp_path), "SELECT count(*) AS n FROM faces").to_pylist() == [{"n": 0}]


def test_the_command_prints_rows_csv_and_json_and_names_a_bad_query(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "query", output, EXAMPLES["samples per status"]]) == 0
    printed = capsys.readouterr().out
    assert "quarantined  2" in printed and "(3 rows)" in printed
    assert main(["audit", "query", output, "SELECT key FROM audit ORDER BY key LIMIT 1", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"key": sample_key(0, 0)}
    assert main(["audit", "query", output, "SELECT count(*) AS n FROM audit", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ['"n"', "6"]
    assert main(["audit", "query", output, "SELECT nope FROM audit"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["audit", "query", "--examples"]) == 0
    examples = capsys.readouterr().out
    assert all(sql in examples for sql in EXAMPLES.values())


def test_the_readme_shows_every_example() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    for sql in EXAMPLES.values():
        assert f'raypipe audit query OUTPUT "{sql}"' in readme
