"""The ``raypipe`` command's own behaviour: version, exit codes for bad usage, config key hints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import raypipe
from raypipe.cli import EXIT_OK, EXIT_USAGE, main


def test_version_prints_the_package_version() -> None:
    done = subprocess.run([sys.executable, "-m", "raypipe.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"raypipe {raypipe.__version__}"


@pytest.mark.parametrize(
    "given",
    ["{tmp}/no-such-folder/", "{tmp}/empty", "{tmp}/jpgs/*.tar", "ftp://host/a.tar", "s3://key:secret@bucket/a.tar"],
)
def test_a_bad_input_is_bad_usage_and_is_named(given: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "jpgs").mkdir()
    (tmp_path / "jpgs" / "a.jpg").write_bytes(b"not a shard")
    (tmp_path / "empty").mkdir()
    spec = given.format(tmp=tmp_path)
    assert main(["anonymize", spec, str(tmp_path / "out"), "--preset", "tiny"]) == EXIT_USAGE
    shown = spec.replace("key:secret@", "") if "secret" in spec else spec
    assert shown.split("/")[-1] in caplog.text or "credentials" in caplog.text
    assert "secret" not in caplog.text
    assert not (tmp_path / "out").exists()  # nothing was written


def test_a_misspelt_config_key_gets_a_suggestion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("method:\n  guidance: -8\npipline:\n  batch_size: 2\n")
    assert main(["anonymize", "in.tar", str(tmp_path / "out"), "--config", str(config)]) == EXIT_USAGE
    assert "'pipline': did you mean 'pipeline'?" in caplog.text


def test_the_summary_names_the_verify_command_to_paste(capsys: pytest.CaptureFixture[str]) -> None:
    from raypipe.cli import print_summary
    from raypipe.pipeline.run import RunSummary

    summary = RunSummary("/data/my out", "r1", 2, 2, 0, 10, {"anonymized": 10}, manifest=3, anchor="s3://a/anchor")
    print_summary(summary)
    shown = capsys.readouterr().out
    assert "check it with: raypipe audit verify '/data/my out' --anchor s3://a/anchor" in shown
    assert "OUTPUT" not in shown


@pytest.mark.parametrize(
    ("job", "named"),
    [
        (["anonymize", "data/shards/", "s3://bucket/out/"], "input: 'data/shards/' is a relative path"),
        (["anonymize", "s3://bucket/in/a.tar", "out"], "output: 'out' is a relative path"),
        (["anonymize", "s3://bucket/in/a.tar", "s3://bucket/out", "--guidance-scale", "x"], "does not parse"),
        (["anonymize", "s3://bucket/in/a.tar", "s3://bucket/out", "--config", "{config}"], "'pipline': did you mean"),
    ],
)
def test_submit_refuses_locally_what_the_cluster_would_refuse(
    job: list[str], named: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "job.yaml").write_text("pipline:\n  batch_size: 2\n")
    job = [arg.format(config=tmp_path / "job.yaml") for arg in job]
    # An address nothing listens on: the refusal comes before any connection or upload.
    assert main(["submit", "--address", "http://127.0.0.1:9", "--", *job]) == EXIT_USAGE
    assert named in caplog.text


def test_a_valid_job_passes_the_local_check(tmp_path: Path) -> None:
    from raypipe.cli import check_submittable

    check_submittable(["--", "anonymize", "s3://bucket/in/a.tar", "/shared/out", "--method", "blur"])


def test_attribute_flags_reach_the_job_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from raypipe.cli import anonymize_config, build_parser

    flags = ["anonymize", "in.tar", "/out", "--attribute", "a child", "--attribute-from", "meta.json:attributes.age"]
    config = anonymize_config(build_parser().parse_args(flags))
    assert config.method.attribute_prompt == "a child"
    assert config.method.attribute_from == "meta.json:attributes.age"
    assert main(["anonymize", "in.tar", str(tmp_path / "out"), "--attribute-from", "prompt"]) == EXIT_USAGE
    assert "method.attribute_from: 'prompt' is not MEMBER:FIELD" in caplog.text


def test_make_samples_writes_parquet_tables_a_dry_run_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    folder = tmp_path / "tables"
    assert main(["make-samples", str(folder), "--format", "parquet", "--shards", "2", "--per-shard", "3"]) == EXIT_OK
    assert sorted(p.name for p in folder.iterdir()) == ["sample-00000.parquet", "sample-00001.parquet"]
    table = pq.read_table(folder / "sample-00000.parquet")
    assert table.num_rows == 3 and table.column_names == ["image", "text", "label"]
    assert b"huggingface" in table.schema.metadata
    capsys.readouterr()
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--method", "blur", "--dry-run"]) == EXIT_OK
    assert "sample-00000.parquet" in capsys.readouterr().out


def test_make_samples_writes_a_tree_a_dry_run_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    assert main(["make-samples", str(folder), "--format", "files", "--shards", "2", "--per-shard", "2"]) == EXIT_OK
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.*")) == [
        "sample-00000/000000.jpg",
        "sample-00000/000000.json",
        "sample-00000/000001.jpg",
        "sample-00000/000001.json",
        "sample-00001/000002.jpg",
        "sample-00001/000002.json",
        "sample-00001/000003.jpg",
        "sample-00001/000003.json",
    ]
    capsys.readouterr()
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--method", "blur", "--dry-run"]) == EXIT_OK
    shown = capsys.readouterr().out
    assert "input:   2 shard(s)" in shown and "sample-00000.files" in shown
