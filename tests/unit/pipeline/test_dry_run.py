"""``raypipe anonymize --dry-run``: the plan from INPUT and OUTPUT, and not one byte written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from raypipe.cli import EXIT_OK, EXIT_USAGE, main
from raypipe.config import ConfigError, build_config
from raypipe.layout import OutputLayout, done_name
from raypipe.pipeline.dryrun import dry_run
from raypipe.pipeline.lease import Holder, acquire
from raypipe.pipeline.plan import make_plan
from tests.integration.jobs import parquet_tables


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def config_for(inputs: Path, out: Path, **method: object):
    return build_config({"input": str(inputs), "output": str(out), "method": {"name": "blur", **method}}, {})


def test_a_fresh_output_is_all_to_do_and_stays_untouched(inputs: Path, tmp_path: Path) -> None:
    planned = dry_run(config_for(inputs, tmp_path / "out"))
    assert planned.todo == ["part-00000.tar", "part-00001.tar", "part-00002.tar"] and planned.refusal is None
    assert planned.lease == "free"
    assert [stage.split(" (")[0] for stage in planned.stages] == ["Read", "Decode", "Detect", "Compose", "Write"]
    assert not any("GPU" in stage for stage in planned.stages)  # a classic method has no GPU stage
    assert "blur (no diffusion model)" in planned.render()
    assert not (tmp_path / "out").exists()


def test_done_shards_are_skipped_and_the_rest_listed(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = config_for(inputs, out)
    make_plan(config, OutputLayout(str(out)))  # the job file a run leaves
    (out / ".raypipe" / "manifest.json").write_text(json.dumps({"shards": {"part-00000.tar": {}}}))
    marker = out / done_name("part-00001.tar")
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    before = snapshot(out)
    planned = dry_run(config)
    assert planned.signed == ["part-00000.tar"] and planned.marked == ["part-00001.tar"]
    assert planned.todo == ["part-00002.tar"] and planned.refusal is None
    assert snapshot(out) == before


def test_what_the_run_would_refuse_is_named_and_exits_2(inputs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    make_plan(config_for(inputs, out), OutputLayout(str(out)))
    before = snapshot(out)
    other = config_for(inputs, out, name="pixelate")
    assert "method.name: 'blur' -> 'pixelate'" in (dry_run(other).refusal or "")
    assert dry_run(other, overwrite=True).refusal is None
    argv = ["anonymize", str(inputs), str(out), "--method", "pixelate", "--dry-run"]
    assert main(argv) == EXIT_USAGE and "REFUSED" in capsys.readouterr().out
    assert main([*argv[:4], "blur", "--dry-run"]) == EXIT_OK
    assert snapshot(out) == before


def test_a_held_lease_and_a_removed_shard_are_shown(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    acquire(layout, Holder.this_process("20261203T000000Z-0000abcd"), ttl_s=60)
    marker = out / done_name("part-00009.tar")
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    planned = dry_run(config_for(inputs, out))
    assert planned.lease.startswith("held by run 20261203T000000Z-0000abcd") and "refused" in planned.lease
    assert planned.removed == ["part-00009.tar"] and "part-00009.tar" in (planned.refusal or "")


def test_tables_are_listed_and_settings_they_cannot_honour_refused(tmp_path: Path) -> None:
    folder = tmp_path / "tables"
    folder.mkdir()
    for name, data in parquet_tables().items():
        (folder / name).write_bytes(data)
    (folder / "00000.tar").write_bytes(b"")  # a tar beside them: auto reads it alone, parquet the tables
    assert dry_run(config_for(folder, tmp_path / "out")).todo == ["00000.tar"]
    tables = build_config(
        {"input": str(folder), "output": str(tmp_path / "out"), "input_format": "parquet", "method": {"name": "blur"}},
        {},
    )
    assert dry_run(tables).todo == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    with pytest.raises(ConfigError, match=r"input_format: must be one of auto, webdataset, parquet.*'parquet'\?"):
        build_config({"input": str(folder), "output": "o", "input_format": "parquets"}, {})
    per_sample = build_config(
        {"input": str(folder / "*.parquet"), "output": str(tmp_path / "out"), "method": {"attribute_from": "json:p"}},
        {},
    )
    with pytest.raises(ConfigError, match=r"method.attribute_from: json:p reads a JSON member .* is a Parquet table"):
        dry_run(per_sample)
    columns = build_config(
        {"input": str(folder / "*.tar"), "output": str(tmp_path / "out"), "method": {"attribute_from": "column:p"}},
        {},
    )
    with pytest.raises(ConfigError, match=r"method.attribute_from: column:p reads a column .* is not a table"):
        dry_run(columns)
    assert main(["anonymize", str(folder), str(tmp_path / "out"), "--input-format", "parquet", "--dry-run"]) == EXIT_OK
    assert not (tmp_path / "out").exists()
