"""Faults during a job: a GPU actor killed mid-batch, a hung stage, a flaky S3, a lost worker node.

After each, the job (or its rerun) completes with exactly the bytes and audit records of an
uninterrupted reference run: every input sample in exactly one state, no output sample missing or
doubled, and ``raypipe audit verify`` passes. Killing the driver and rerunning is covered by
``test_job_resume.py``. Jobs run as ``raypipe`` processes in their own PID namespace (nothing they
start survives them), except the cluster test's driver, which must see the cluster's raylets.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from raypipe.audit.signing import KEY_ENV
from raypipe.cli import main as raypipe_main
from raypipe.layout import audit_name
from raypipe.pipeline import faults
from tests.integration.faulty_proxy import FaultyProxy
from tests.integration.jobs import TEST_METHOD, TEST_MODELS, TEST_PIPELINE, read_audit, read_tar, sample_shards
from tests.integration.s3server import free_port as _free_port
from tests.integration.test_job_resume import VOLATILE, audit_rows, run_job

pytestmark = [pytest.mark.isolated, pytest.mark.slow]

SHARDS, PER_SHARD = 3, 4
NAMES = [f"part-{i:05d}.tar" for i in range(SHARDS)]
AUDIT_KEY = secrets.token_hex(32)
RAYPIPE = str(Path(sys.executable).with_name("raypipe"))
RAY = str(Path(sys.executable).with_name("ray"))


def write_config(folder: Path, name: str, inputs: str, output: str, **sections: dict[str, Any]) -> Path:
    config = {
        "input": inputs,
        "output": output,
        "models": TEST_MODELS,
        "method": TEST_METHOD,
        "pipeline": TEST_PIPELINE | {"batch_size": 2} | sections.pop("pipeline", {}),
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def job(config: Path, **env: str) -> tuple[int, str]:
    return run_job(config, {KEY_ENV: AUDIT_KEY, **env}, timeout=400)


def assert_same_as_reference(out: Path, reference: Path, inputs: Path) -> None:
    """Same tars and audit records as the reference; one record per input sample; verify passes."""
    for name in NAMES:
        keys = [s.key for s in read_tar((inputs / name).read_bytes())]
        audit = audit_name(name)
        records = read_audit((out / audit).read_bytes())
        assert [r["key"] for r in records] == keys and [r["seq"] for r in records] == list(range(len(keys)))
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
        assert audit_rows(out / audit) == audit_rows(reference / audit), name
    assert not list((out / ".raypipe" / "fragments").glob("*/*.parquet"))
    assert verify(str(out)) == 0


def verify(output: str, **variables: str) -> int:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, AUDIT_KEY)
        for name, value in variables.items():
            env.setenv(name, value)
        return raypipe_main(["audit", "verify", output])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    for name, data in sample_shards(shards=SHARDS, per_shard=PER_SHARD).items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def pattern(inputs: Path) -> str:
    return str(inputs / f"part-{{00000..{SHARDS - 1:05d}}}.tar")


@pytest.fixture(scope="module")
def reference(inputs: Path, pattern: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reference")
    code, log = job(write_config(folder, "reference", pattern, str(folder / "out")))
    assert code == 0, log
    return folder / "out"


def test_a_gpu_actor_killed_mid_batch_is_replaced_and_nothing_is_lost_or_doubled(
    inputs: Path, pattern: str, reference: Path, tmp_path: Path
) -> None:
    once = tmp_path / "once"
    once.mkdir()
    config = write_config(tmp_path, "killed-actor", pattern, str(tmp_path / "out"))
    code, log = job(config, **{faults.KILL_ANONYMIZE_AT_BATCH: "2", faults.ONCE_DIR: str(once)})
    assert code == 0, log
    assert (once / faults.KILL_ANONYMIZE_AT_BATCH).exists()  # the actor really died mid-batch
    assert_same_as_reference(tmp_path / "out", reference, inputs)


def test_a_hung_stage_is_ended_by_the_watchdog_and_the_rerun_completes(
    inputs: Path, pattern: str, reference: Path, tmp_path: Path
) -> None:
    once = tmp_path / "once"
    once.mkdir()
    out = str(tmp_path / "out")
    # The timeout must outlast a normal gap between commits, job start included, on a busy machine.
    config = write_config(tmp_path, "hung", pattern, out, pipeline={"stall_timeout_s": 40})
    started = time.monotonic()
    code, log = job(config, **{faults.HANG_ANONYMIZE_AT_BATCH: "2", faults.ONCE_DIR: str(once)})
    assert code == 3, log  # a runtime error, not a hang
    assert (once / faults.HANG_ANONYMIZE_AT_BATCH).exists()  # the stage really hung
    assert "StalledJobError: no progress for" in log and "pipeline.stall_timeout_s=40" in log, log
    assert "rerun the same command to resume" in log
    assert time.monotonic() - started < 300
    code, log = job(write_config(tmp_path, "rerun", pattern, out))  # the same job (the timeout is not part of it)
    assert code == 0, log
    assert_same_as_reference(tmp_path / "out", reference, inputs)


def test_s3_errors_and_stalls_are_retried_until_the_job_completes(
    s3_server: str, bucket: tuple[str, Any], inputs: Path, reference: Path, tmp_path: Path
) -> None:
    name, client = bucket
    for shard in NAMES:
        client.put_object(Bucket=name, Key=f"in/{shard}", Body=(inputs / shard).read_bytes())
    config = write_config(
        tmp_path,
        "flaky-s3",
        f"s3://{name}/in/part-{{00000..{SHARDS - 1:05d}}}.tar",
        f"s3://{name}/out",
        storage={"read_timeout_s": 2, "connect_timeout_s": 2},
        pipeline={"stall_timeout_s": 300},
    )
    with FaultyProxy(s3_server, error_500=13, error_503=17, stall=29, stall_s=5).running() as proxy:
        code, log = job(config, AWS_ENDPOINT_URL=proxy.url)
    assert code == 0, log
    assert proxy.counts["500"] and proxy.counts["503"] and proxy.counts["stall"], proxy.counts

    got = tmp_path / "got"
    got.mkdir()
    for shard in NAMES:
        for path in (shard, audit_name(shard)):
            (got / path).parent.mkdir(parents=True, exist_ok=True)
            (got / path).write_bytes(client.get_object(Bucket=name, Key=f"out/{path}")["Body"].read())
        assert (got / shard).read_bytes() == (reference / shard).read_bytes(), shard
        audit = audit_name(shard)
        same_run = VOLATILE | {"source_shard", "config_hash"}  # the input URIs differ from the reference
        assert [{k: v for k, v in r.items() if k not in same_run} for r in read_audit((got / audit).read_bytes())] == [
            {k: v for k, v in r.items() if k not in same_run} for r in read_audit((reference / audit).read_bytes())
        ]
    listing = client.list_objects_v2(Bucket=name, Prefix="out/.raypipe/fragments/").get("KeyCount", 0)
    assert listing == 0
    assert verify(f"s3://{name}/out", AWS_ENDPOINT_URL=s3_server) == 0  # straight to the server, no faults


# --- a worker node lost mid-run -----------------------------------------------------------------------


class Node:
    """``ray start --block`` as the init of its own PID namespace: killing it takes the whole node."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child", RAY, "start", "--block", *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # unshare --kill-child SIGKILLs the namespace's init
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    temp = Path(tempfile.mkdtemp(prefix="rpn", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = _free_port()
    env = dict(
        os.environ,
        RAY_TMPDIR=str(temp),
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    common = ["--node-ip-address=127.0.0.1", "--object-store-memory=150000000", "--disable-usage-stats"]
    nodes: list[Node] = []

    def add_worker() -> Node:
        node = Node(
            [f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"anonymize_slot": 1}', *common],
            env,
            tmp_path / f"worker-{len(nodes)}.log",
        )
        nodes.append(node)
        return node

    head = Node(
        ["--head", f"--port={port}", "--num-cpus=3", "--include-dashboard=false", f"--temp-dir={temp}", *common],
        env,
        tmp_path / "head.log",
    )
    nodes.append(head)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "add_worker": add_worker, "env": env}
    finally:
        for node in reversed(nodes):
            node.kill()
        wait_until_gone(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def wait_until_gone(marker: str, timeout_s: float = 30) -> None:
    """Until no process mentions ``marker`` in its command line (a killed namespace dies asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = False
        for proc in Path("/proc").iterdir():
            try:
                alive = alive or (proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes())
            except OSError:
                continue
        if not alive:
            return
        time.sleep(0.2)


def committed_anything(out: Path) -> bool:
    return any((out / ".raypipe" / "fragments").glob("*/*.parquet")) or any(out.glob(".raypipe/shards/*.done.json"))


def test_a_lost_worker_node_is_replaced_and_the_job_completes(
    cluster: dict[str, Any], inputs: Path, pattern: str, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = write_config(
        tmp_path,
        "lost-node",
        pattern,
        str(out),
        # The anonymize actor can only live on a worker node: losing that node loses the GPU stage.
        pipeline={
            "address": cluster["address"],
            "anonymize_actor_resources": {"anonymize_slot": 1},
            "stall_timeout_s": 120,
        },
    )
    victim = cluster["add_worker"]()
    # A slow GPU stage: when the first sample is committed, the lost node still has batches to do (a
    # fast one could finish them all before any commit shows, and then nothing is lost).
    env = dict(cluster["env"], **{KEY_ENV: AUDIT_KEY, faults.SLOW_ANONYMIZE_S: "3"})
    command = [RAYPIPE, "anonymize", "--config", str(config), "--no-progress"]
    with (tmp_path / "driver.log").open("wb") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not committed_anything(out) and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert len(list(out.glob(".raypipe/shards/*.done.json"))) < SHARDS, (
                "the node was lost too late to test anything"
            )
            victim.kill()
            cluster["add_worker"]()  # the replacement an autoscaler would bring
            code = driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    first_log = (tmp_path / "driver.log").read_text()[-3000:]
    if code != 0:  # the job may fail over; then its rerun must complete
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert rerun.returncode == 0, first_log + rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert_same_as_reference(out, reference, inputs)
    nodes = {r["node"] for name in NAMES for r in read_audit((out / audit_name(name)).read_bytes())}
    assert len(nodes) == 2, nodes  # work anonymized on the lost node, then on its replacement
