"""What the job checks and stores before any work: the signing key, the stored config, the config hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raypipe.audit.signing import KEY_ENV
from raypipe.config import build_config
from raypipe.io.tars import Sample, tar_bytes
from raypipe.layout import OutputLayout
from raypipe.pipeline import run as run_module
from raypipe.pipeline.plan import OutputConflictError, config_hash, make_plan

SECRETS = ("pw-in-address", "pw-in-model", "tok-in-query", "pw-in-quarantine", "tok-in-endpoint", "pw-in-vae")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("part-00000.tar", "part-00001.tar"):
        (folder / name).write_bytes(tar_bytes([Sample("a", [("a.txt", b"no face here")])]))
    return folder


def test_the_stored_config_holds_no_credentials_in_any_uri() -> None:
    config = build_config(
        {
            "input": "s3://bucket/in/part-{00000..00001}.tar",
            "output": "s3://bucket/out/",
            "pipeline": {"address": "ray://admin:pw-in-address@head:10001"},
            "models": {
                "sdxl": "https://user:pw-in-model@hub.example/sdxl",
                "ip_adapter": "s3://models/ip?X-Amz-Security-Token=tok-in-query&X-Amz-Signature=tok-in-query",
                "vae": "https://u:pw-in-vae@hub.example/vae",
                "insightface": "https://hub.example/buffalo?token=tok-in-query",
            },
            "audit": {"quarantine_output": "s3://holder:pw-in-quarantine@held/q/"},
            "storage": {"endpoint_url": "http://minio:9000/?X-Amz-Security-Token=tok-in-endpoint"},
        },
        {},
    )
    stored = yaml.safe_dump(run_module._resolved(config), sort_keys=False)  # what run() writes to config.yaml
    assert not [secret for secret in SECRETS if secret in stored], stored
    resolved = yaml.safe_load(stored)
    assert resolved["pipeline"]["address"] == "ray://head:10001"
    assert resolved["models"]["sdxl"] == "https://hub.example/sdxl"
    assert resolved["models"]["ip_adapter"] == "s3://models/ip?<redacted>"
    assert resolved["audit"]["quarantine_output"] == "s3://held/q/"
    assert resolved["input"] == ["s3://bucket/in/part-{00000..00001}.tar"]


def test_a_verify_only_key_stops_the_job_before_any_work(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from raypipe.cli import main

    public = Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv(KEY_ENV, pem.decode())

    def no_ray(config: object) -> None:
        raise AssertionError("Ray was started with a key that cannot sign")

    monkeypatch.setattr(run_module, "connect", no_ray)
    out = tmp_path / "out"
    code = main(["anonymize", str(inputs / "part-{00000..00001}.tar"), str(out), "--preset", "tiny", "--no-progress"])
    assert code == 2
    assert "is an Ed25519 public key: it can verify a manifest but not sign one" in caplog.text
    assert not out.exists() or not any(out.rglob("*"))  # nothing planned, claimed or written


def test_batch_size_is_part_of_the_config_hash_but_scheduling_is_not() -> None:
    base = build_config({"input": "/in/a.tar", "output": "/out", "pipeline": {"batch_size": 1}}, {})
    changed = dataclasses.replace(base, pipeline=dataclasses.replace(base.pipeline, batch_size=2))
    assert config_hash(changed) != config_hash(base)
    scheduling = dataclasses.replace(
        base.pipeline,
        progress=False,
        anonymize_actors_min=2,
        anonymize_actors_max=4,
        detect_actors=3,
        compose_actors=2,
        num_cpus_per_actor=1.0,
        stall_timeout_s=60.0,
        address="ray://head:10001",
    )
    assert config_hash(dataclasses.replace(base, pipeline=scheduling)) == config_hash(base)


def test_a_resume_with_another_batch_size_is_refused(inputs: Path, tmp_path: Path) -> None:
    def config(**pipeline: object) -> object:
        spec = {"input": str(inputs / "part-{00000..00001}.tar"), "output": str(tmp_path / "out")}
        return build_config(spec | {"pipeline": {"batch_size": 1, **pipeline}}, {})

    layout = OutputLayout(str(tmp_path / "out"))
    make_plan(config(), layout)  # the first run claims OUTPUT (then, say, crashes)
    make_plan(config(progress=False, anonymize_actors_max=3, compose_actors=2), layout)  # same bytes: resumes
    with pytest.raises(OutputConflictError, match="different configuration"):
        make_plan(config(batch_size=2), layout)


@pytest.mark.parametrize(
    ("pipeline", "cpus", "pool"),
    [
        ({}, 2.0, (1, 1)),  # this machine: one compose actor, one CPU kept for read and write tasks
        ({}, 16.0, (1, 28)),  # 16 - 0.5 (anonymize) - 0.5 (detect) - 1 = 14 CPUs, 0.5 each
        ({"anonymize_actors_max": 4, "detect": "gpu_actor"}, 64.0, (1, 122)),
        ({"compose_actors": 3}, 64.0, (3, 3)),  # a number is exactly that many
    ],
)
def test_the_compose_pool_grows_with_the_cluster(pipeline: dict, cpus: float, pool: tuple[int, int]) -> None:
    config = build_config({"input": "/in/a.tar", "output": "/out", "pipeline": pipeline}, {})
    assert run_module.compose_pool(config, cpus) == pool


def test_a_bad_compose_pool_is_named() -> None:
    with pytest.raises(ValueError, match=r"pipeline\.compose_actors"):
        build_config({"input": "/in/a.tar", "output": "/out", "pipeline": {"compose_actors": "many"}}, {})
