"""Job configuration checks that need the whole job: where quarantined originals may go."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.config import ConfigError, JobConfig, build_config, input_folder


def job(inputs: str | list[str], output: str, quarantine: str) -> JobConfig:
    return build_config({"input": inputs, "output": output, "audit": {"quarantine_output": quarantine}}, {})


@pytest.mark.parametrize(
    ("inputs", "quarantine", "inside"),
    [
        ("/data/in/part-00000.tar", "/data/in", "INPUT"),  # would overwrite the input shard of the same name
        ("/data/in/part-{00000..00009}.tar", "/data/in/", "INPUT"),
        ("/data/in/*.tar", "file:///data/in/held", "INPUT"),
        ("/data/in/*/x.tar", "/data/x/../in/held", "INPUT"),
        ("s3://bucket/in/part-{00000..00009}.tar", "s3a://bucket/in", "INPUT"),
        ("s3://bucket/in/part-0000?.tar", "s3://bucket/in/held/", "INPUT"),
        (["s3://other/x.tar", "gs://bucket/in/a.tar"], "gcs://bucket/in", "INPUT"),
        ("s3://bucket/in/a.tar", "s3://bucket/out/held", "OUTPUT"),  # real faces released with the dataset
        ("s3://bucket/in/a.tar", "s3a://bucket/out", "OUTPUT"),
    ],
)
def test_quarantine_inside_input_or_output_is_refused(inputs: str | list[str], quarantine: str, inside: str) -> None:
    with pytest.raises(
        ConfigError, match=r"audit\.quarantine_output: must be a location outside INPUT and OUTPUT"
    ) as e:
        job(inputs, "s3://bucket/out/", quarantine)
    assert f"inside {inside}" in str(e.value)


@pytest.mark.parametrize(
    ("inputs", "quarantine"),
    [
        ("/data/in/part-{00000..00009}.tar", "/data/held"),
        ("/data/in/*.tar", "/data/in-held"),  # a sibling whose name starts like the input folder
        ("s3://bucket/in/a.tar", "s3://bucket/held/"),
        ("s3://bucket/in/a.tar", "s3://quarantine/in"),
        ("s3://bucket/in/a.tar", "/bucket/in"),  # another storage altogether
    ],
)
def test_quarantine_elsewhere_is_accepted(inputs: str, quarantine: str) -> None:
    assert job(inputs, "/data/out", quarantine).audit.quarantine_output == quarantine


def test_relative_paths_are_compared_where_they_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="inside INPUT"):
        job("in/part-00000.tar", "out", str(tmp_path / "in"))
    with pytest.raises(ConfigError, match="inside OUTPUT"):
        job(str(tmp_path / "in" / "a.tar"), "out/", "./out/held")


def test_the_check_also_guards_configs_built_in_python() -> None:
    from raypipe.config import AuditConfig

    with pytest.raises(ConfigError, match="quarantine_output"):
        JobConfig(input=("/d/in/a.tar",), output="/d/out", audit=AuditConfig(quarantine_output="/d/in"))


@pytest.mark.parametrize(
    ("spec", "folder"),
    [
        ("s3://b/in/part-{00000..00009}.tar", "s3://b/in"),
        ("/data/in/x.tar", "/data/in"),
        ("/data/in/*/x.tar", "/data/in"),
        ("s3://b/{a,b}/x.tar", "s3://b"),
        ("s3://buck*/x.tar", "s3://"),  # a pattern in the bucket name: all of that storage
        ("x.tar", "."),
    ],
)
def test_input_folder_is_the_folder_of_the_fixed_prefix(spec: str, folder: str) -> None:
    assert input_folder(spec) == folder


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("reid_threshold", 0.9 - 0.9, "Euclidean distance"),
        ("reid_threshold", 3, "Euclidean distance"),
        ("retries", -1, "integer in [0, 10]"),
        ("retries", True, "integer in [0, 10]"),
        ("retry_guidance_step", 2.5, "<= 0"),
        ("fallback", "swirl", "'blur'"),
        ("non_face_score", "high", "detector score"),
    ],
)
def test_a_bad_gate_setting_is_named(key: str, value: object, allowed: str) -> None:
    from raypipe.config import AuditConfig

    with pytest.raises(ValueError, match=f"audit.{key}") as raised:
        AuditConfig(**{key: value})  # type: ignore[arg-type]
    assert allowed in str(raised.value)


def test_auto_batches_need_a_whole_gpu_per_actor() -> None:
    spec = {"input": "/in/a.tar", "output": "/out", "method": {"face_batch_size": "auto"}}
    assert build_config(spec, {}).method.face_batch_size == "auto"
    with pytest.raises(ConfigError, match=r"num_gpus_per_actor is 0\.5"):
        build_config(spec | {"pipeline": {"num_gpus_per_actor": 0.5}}, {})
