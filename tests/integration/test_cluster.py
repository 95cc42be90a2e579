"""A two-node Ray cluster on loopback: jobs sent with ``ray job submit`` and ``raypipe submit``.

Each node runs in its own PID namespace (``unshare --pid --kill-child``): stopping the ``unshare``
process ends every process of that node, so the test never has to look for Ray processes by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raypipe.audit.signing import parse_key
from raypipe.audit.verify import verify_output
from tests.integration.jobs import TEST_METHOD, TEST_MODELS, TEST_PIPELINE, sample_shards
from tests.integration.s3server import free_port as _free_port

pytestmark = [pytest.mark.isolated, pytest.mark.slow]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
AUDIT_KEY = "cluster-test-audit-key-0123456789"
# One anonymize actor per node: each node offers one "anon" slot and each actor asks for one.
CLUSTER_PIPELINE = TEST_PIPELINE | {
    "anonymize_actors_min": 2,
    "anonymize_actors_max": 2,
    "anonymize_actor_resources": {"anon": 1},
    "batch_size": 2,
}


@dataclass
class Cluster:
    gcs: str
    dashboard: str
    env: dict[str, str]


def _node(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child", str(BIN / "ray"), "start", "--block", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(node: subprocess.Popen) -> None:
    """SIGKILL the node's first process, which is its PID namespace's init: the kernel then ends every
    process of that node (raylet, object store, workers) with it."""
    children = Path(f"/proc/{node.pid}/task/{node.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        os.kill(int(pid), signal.SIGKILL)
    node.wait(timeout=60)


def _wait_for_nodes(dashboard: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{dashboard}/nodes?view=summary", timeout=2) as response:
                summary = json.load(response)["data"]["summary"]
            if sum(1 for n in summary if n["raylet"]["state"] == "ALIVE") >= count:
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{count} Ray nodes did not come up within {timeout}s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    temp = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{os.environ['PATH']}")
    common = ["--num-cpus=2", '--resources={"anon": 1}', "--object-store-memory=300000000"]
    head = _node(
        [
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={temp}",
            *common,
        ],
        env,
    )
    nodes = [head]
    try:
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        _wait_for_nodes(dashboard, 1)
        nodes.append(_node([f"--address=127.0.0.1:{gcs_port}", "--node-ip-address=127.0.0.1", *common], env))
        _wait_for_nodes(dashboard, 2)
        yield Cluster(gcs=f"127.0.0.1:{gcs_port}", dashboard=dashboard, env=env)
    finally:
        for node in reversed(nodes):
            _stop(node)


def _config(path: Path, **data: object) -> Path:
    body = {"models": TEST_MODELS, "method": TEST_METHOD, "pipeline": CLUSTER_PIPELINE} | data
    path.write_text(yaml.safe_dump(body))
    return path


def test_ray_job_submit_runs_the_job_on_both_nodes(cluster: Cluster, tmp_path: Path) -> None:
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, data in sample_shards(shards=3, per_shard=5).items():
        (inputs / name).write_bytes(data)
    config = _config(tmp_path / "job.yaml", input=str(inputs / "part-{00000..00002}.tar"), output=str(output))
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--",
         sys.executable, str(REPO / "jobs" / "anonymize.py"), "--config", str(config), "--no-progress"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout.lower()
    nodes = set()
    for name in ("part-00000", "part-00001", "part-00002"):
        records = pq.read_table(output / f".raypipe/shards/{name}.audit.parquet").to_pylist()
        assert len(records) == 5
        nodes |= {r["node"] for r in records}
    assert len(nodes) == 2, nodes  # the anonymize actors ran on both nodes


def test_raypipe_submit_wait_over_s3_and_the_outputs_verify(
    cluster: Cluster, s3_server: str, aws_env: pytest.MonkeyPatch, bucket, tmp_path: Path
) -> None:
    from raypipe.cli import main

    aws_env.setenv("AWS_ENDPOINT_URL", s3_server)
    # The signing key is never forwarded with --env: the job reads it from a file on the head node, as a
    # mounted secret would be (this cluster's head runs on this machine).
    key_file = tmp_path / "audit.key"
    key_file.write_text(AUDIT_KEY)
    key_file.chmod(0o600)
    name, client = bucket
    for shard, data in sample_shards(shards=2, per_shard=4).items():
        client.put_object(Bucket=name, Key=f"in/{shard}", Body=data)
    config = _config(tmp_path / "s3-job.yaml")
    code = main([
        "submit", "--address", cluster.dashboard, "--wait",
        "--env", "AWS_ENDPOINT_URL", "--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY",
        "--env", "AWS_DEFAULT_REGION",
        "--", "anonymize", f"s3://{name}/in/part-{{00000..00001}}.tar", f"s3://{name}/out/",
        "--config", str(config), "--no-progress", "--key-file", str(key_file),
    ])  # fmt: skip
    assert code == 0
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=name, Prefix="out/")["Contents"]}
    assert {"out/part-00000.tar", "out/part-00001.tar", "out/.raypipe/manifest.json"} <= keys
    report = verify_output(f"s3://{name}/out/", parse_key(AUDIT_KEY.encode(), "test"))
    assert report.ok, report.render()
