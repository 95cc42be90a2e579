"""`raypipe submit` / `raypipe jobs`: what is sent to Ray, and how the job's end becomes an exit status.

No cluster: a fake client stands in for ``ray.job_submission.JobSubmissionClient``.
"""

from __future__ import annotations

import argparse
import io
import logging
import secrets
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import raypipe
from raypipe import submit
from raypipe.config import ConfigError
from raypipe.submit import add_submit_commands, build_submission, exit_code_for, submit_job

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = str(Path(raypipe.__file__).resolve().parent)
SECRET = "s3cr3t-value-never-shown"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A minimal raypipe checkout: the job entrypoint and an example config."""
    root = tmp_path / "checkout"
    (root / "jobs" / "configs").mkdir(parents=True)
    (root / "jobs" / "anonymize.py").write_text("print('job')\n")
    (root / "jobs" / "configs" / "s3-gpu.yaml").write_text("models:\n  preset: tiny\n")
    (root / "jobs" / "__pycache__").mkdir()
    (root / "jobs" / "__pycache__" / "anonymize.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_default_sends_jobs_folder_config_and_package(checkout: Path) -> None:
    config = checkout / "jobs" / "configs" / "s3-gpu.yaml"
    job = ["--", "anonymize", "s3://b/in/data-{00000..00099}.tar", "s3://b/anon/", "--config", str(config)]
    job += ["--steps", "50"]

    submission = build_submission(job, source_root=checkout, environ={})

    assert shlex.split(submission.entrypoint) == [
        "python",
        "jobs/anonymize.py",
        "s3://b/in/data-{00000..00099}.tar",
        "s3://b/anon/",
        "--config",
        "jobs/configs/s3-gpu.yaml",
        "--steps",
        "50",
    ]
    # Quoted, so no shell on the cluster expands the braces: the job expands the shard pattern itself.
    assert "'s3://b/in/data-{00000..00099}.tar'" in submission.entrypoint
    assert submission.files == {
        "jobs/anonymize.py": checkout / "jobs" / "anonymize.py",
        "jobs/configs/s3-gpu.yaml": config,
    }
    assert submission.runtime_env["py_modules"] == [PACKAGE_DIR]
    assert "__pycache__/" in submission.runtime_env["excludes"]
    assert "working_dir" not in submission.runtime_env  # a staged folder is added at submit time
    assert submission.entrypoint_num_cpus == 0


def test_readme_command_from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    submission = build_submission(
        ["anonymize", "s3://b/in/data-{00000..00099}.tar", "s3://b/anon/", "--config", "jobs/configs/s3-gpu.yaml"],
        environ={},
    )
    assert submission.entrypoint.startswith("python jobs/anonymize.py ")
    assert submission.entrypoint.endswith("--config jobs/configs/s3-gpu.yaml")
    assert submission.files["jobs/anonymize.py"] == REPO / "jobs" / "anonymize.py"
    assert submission.files["jobs/configs/s3-gpu.yaml"] == REPO / "jobs" / "configs" / "s3-gpu.yaml"


def test_config_from_elsewhere_travels_under_configs(checkout: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("method:\n  num_steps: 10\n")

    submission = build_submission(["anonymize", "in/", "out/", f"--config={mine}"], source_root=checkout, environ={})

    assert shlex.split(submission.entrypoint)[-2:] == ["--config", "configs/mine.yaml"]
    assert submission.files["configs/mine.yaml"] == mine.resolve()


def test_working_dir_is_uploaded_without_caches_or_its_own_package(checkout: Path, tmp_path: Path) -> None:
    config = checkout / "jobs" / "configs" / "s3-gpu.yaml"
    submission = build_submission(
        ["anonymize", "--config", str(config)], working_dir=checkout, python="/opt/venv/bin/python", environ={}
    )
    assert submission.runtime_env["working_dir"] == str(checkout)
    assert {".git/", ".venv/", "__pycache__/", "/raypipe/"} <= set(submission.runtime_env["excludes"])
    assert submission.runtime_env["py_modules"] == [PACKAGE_DIR]
    assert submission.files == {}
    assert shlex.split(submission.entrypoint) == [
        "/opt/venv/bin/python",
        "jobs/anonymize.py",
        "--config",
        "jobs/configs/s3-gpu.yaml",
    ]

    outside = tmp_path / "outside.yaml"
    outside.write_text("{}\n")
    with pytest.raises(ConfigError, match="must be inside --working-dir"):
        build_submission(["anonymize", "--config", str(outside)], working_dir=checkout, environ={})
    with pytest.raises(ConfigError, match=r"no jobs/anonymize\.py"):
        build_submission(["anonymize"], working_dir=tmp_path, environ={})


def test_no_package_leaves_raypipe_to_the_cluster_image(checkout: Path) -> None:
    submission = build_submission(["anonymize", "in/", "out/"], source_root=checkout, package=False, environ={})
    assert "py_modules" not in submission.runtime_env
    assert shlex.split(submission.entrypoint) == ["python", "jobs/anonymize.py", "in/", "out/"]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ([], "nothing to submit"),
        (["--"], "nothing to submit"),
        (["status", "out/"], "only anonymize can be submitted"),
        (["anonymize-image", "a.jpg", "b.jpg"], "only anonymize can be submitted"),
        (["python", "evil.py"], "only anonymize can be submitted"),
        (["anonymize", "in/", "--config"], "expected a file name"),
        (["anonymize", "--config", "s3://b/job.yaml"], "give a local file"),
    ],
)
def test_only_anonymize_jobs_are_accepted(checkout: Path, job: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_submission(job, source_root=checkout, environ={})


def test_missing_config_file_is_named(checkout: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        build_submission(["anonymize", "--config", "nope.yaml"], source_root=checkout, environ={})


def test_env_values_are_forwarded_but_never_described(checkout: Path) -> None:
    environ = {"AWS_ENDPOINT_URL": "http://minio:9000", "API_TOKEN": SECRET}
    submission = build_submission(
        ["anonymize"], source_root=checkout, env_names=["AWS_ENDPOINT_URL", "API_TOKEN"], environ=environ
    )
    assert submission.runtime_env["env_vars"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert submission.runtime_env["env_vars"]["API_TOKEN"] == SECRET
    assert SECRET not in repr(submission.describe())
    assert submission.describe()["runtime_env"]["env_vars"]["API_TOKEN"] == "<hidden>"


@pytest.mark.parametrize(
    ("names", "message"),
    [(["NOT_SET_HERE"], "NOT_SET_HERE: not set"), ([f"API_TOKEN={SECRET}"], r"'API_TOKEN': give a variable NAME")],
)
def test_env_errors_name_the_variable_never_a_value(checkout: Path, names: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build_submission(["anonymize"], source_root=checkout, env_names=names, environ={"API_TOKEN": SECRET})
    assert SECRET not in str(caught.value)


AUDIT_KEY = secrets.token_hex(32)  # what `openssl rand -hex 32` prints


@pytest.mark.parametrize("name", ["RAYPIPE_AUDIT_KEY", "MY_SIGNING_SECRET"])
def test_the_audit_key_is_never_forwarded_through_env(checkout: Path, name: str) -> None:
    environ = {"RAYPIPE_AUDIT_KEY": AUDIT_KEY, "MY_SIGNING_SECRET": AUDIT_KEY, "AWS_REGION": "eu-west-1"}
    with pytest.raises(ConfigError, match=f"--env {name}") as caught:
        build_submission(["anonymize"], source_root=checkout, env_names=["AWS_REGION", name], environ=environ)
    message = str(caught.value)
    assert AUDIT_KEY not in message
    assert "dashboard" in message and "audit.key_file" in message and "Kubernetes" in message  # what to do instead


def test_a_refused_audit_key_sends_nothing_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from raypipe.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("RAYPIPE_AUDIT_KEY", AUDIT_KEY)
    fake = FakeClient()
    monkeypatch.setattr(submit, "connect", lambda address: fake)
    code = main(
        ["submit", "--address", "http://head:8265", "--env", "RAYPIPE_AUDIT_KEY", "--", "anonymize", "in", "out"]
    )
    assert code == 2 and fake.submitted == {}
    captured = capsys.readouterr()
    assert AUDIT_KEY not in captured.out + captured.err + caplog.text


class FakeClient:
    """Records what would reach Ray; plays back a job that logs two lines and ends in ``status``."""

    def __init__(self, status: str = "SUCCEEDED", driver_exit_code: int | None = 0) -> None:
        self.status = status
        self.driver_exit_code = driver_exit_code
        self.submitted: dict[str, Any] = {}
        self.staged: dict[str, str] = {}

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted = kwargs
        folder = Path(kwargs["runtime_env"]["working_dir"])  # Ray uploads it during this call
        self.staged = {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}
        return "raysubmit_test123"

    async def tail_job_logs(self, job_id: str):
        for chunk in ("loading models\n", "done\n"):
            yield chunk

    def get_job_status(self, job_id: str) -> str:
        return self.status

    def get_job_info(self, job_id: str) -> Any:
        return SimpleNamespace(status=self.status, driver_exit_code=self.driver_exit_code, message="")

    def get_job_logs(self, job_id: str) -> str:
        return "loading models\ndone\n"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="raypipe")
    add_submit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_submits_staged_folder_and_prints_only_the_id(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("AWS_ENDPOINT_URL", SECRET)
    fake = FakeClient()
    addresses: list[str] = []
    monkeypatch.setattr(submit, "connect", lambda address: addresses.append(address) or fake)
    caplog.set_level(logging.DEBUG, logger="raypipe")

    argv = ["submit", "--address", "http://head:8265", "--env", "AWS_ENDPOINT_URL", "--entrypoint-num-cpus", "1"]
    code = run_cli([*argv, "--", "anonymize", "s3://b/in/", "s3://b/out/", "--config", "jobs/configs/s3-gpu.yaml"])

    assert code == 0
    assert addresses == ["http://head:8265"]
    assert capsys.readouterr().out == "raysubmit_test123\n"
    assert SECRET not in caplog.text
    assert fake.submitted["runtime_env"]["env_vars"]["AWS_ENDPOINT_URL"] == SECRET
    assert fake.submitted["entrypoint_num_cpus"] == 1
    assert fake.submitted["runtime_env"]["py_modules"] == [PACKAGE_DIR]
    assert fake.staged["jobs/anonymize.py"] == (REPO / "jobs" / "anonymize.py").read_text()
    assert fake.staged["jobs/configs/s3-gpu.yaml"] == (REPO / "jobs" / "configs" / "s3-gpu.yaml").read_text()
    assert not Path(fake.submitted["runtime_env"]["working_dir"]).exists()  # cleaned up after the upload


def test_a_bad_config_fails_before_anything_is_sent(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  preset: large\n")
    fake = FakeClient()
    with pytest.raises(ConfigError, match=r"models\.preset"):
        submit_job("http://head:8265", ["anonymize", "--config", str(bad)], client=fake, out=io.StringIO())
    assert fake.submitted == {}


@pytest.mark.parametrize(
    ("status", "driver_exit_code", "expected"),
    [
        ("SUCCEEDED", 0, 0),
        ("FAILED", 1, 1),  # the job ran; some samples were quarantined or failed
        ("FAILED", 2, 2),  # the job rejected its configuration
        ("FAILED", 3, 3),  # the job crashed
        ("FAILED", None, 1),  # e.g. the runtime env could not be set up
        ("FAILED", 137, 1),  # killed (out of memory)
        ("STOPPED", None, 3),
        ("PENDING", None, 3),
    ],
)
def test_exit_code_follows_the_job(status: str, driver_exit_code: int | None, expected: int) -> None:
    assert exit_code_for(status, driver_exit_code) == expected


@pytest.mark.parametrize(("status", "driver_exit_code", "expected"), [("SUCCEEDED", 0, 0), ("FAILED", 1, 1)])
def test_wait_streams_logs_and_returns_the_job_status(
    monkeypatch: pytest.MonkeyPatch, status: str, driver_exit_code: int, expected: int
) -> None:
    monkeypatch.chdir(REPO)
    fake = FakeClient(status, driver_exit_code)
    out = io.StringIO()
    code = submit_job("http://head:8265", ["anonymize", "in/", "out/"], wait=True, client=fake, out=out)
    assert code == expected
    assert out.getvalue() == "raysubmit_test123\nloading models\ndone\n"


def test_address_defaults_to_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "http://cluster-head:8265")
    parser = argparse.ArgumentParser()
    add_submit_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["jobs", "list"]).address == "http://cluster-head:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    parser = argparse.ArgumentParser()
    add_submit_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["jobs", "logs", "raysubmit_1", "--follow"]).address == "http://127.0.0.1:8265"
