"""Credentials never reach logs, stored configs or the audit; identity embeddings never reach the output.

A job runs against the S3 server with recognisable random secrets in its environment (AWS keys, a
session token, the audit signing key) and in the model locations of its config (``user:password@`` and
signed-URL query tokens, which the stored config must drop); two more are refused for secrets in their configuration (an
input URI with ``user:password@``, an endpoint with credentials). Then every object under OUTPUT,
every file Ray wrote for the run (its own temp folder) and everything the commands printed is searched
for each secret, and the audit and manifest files for vectors of embedding length.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from raypipe.audit.signing import KEY_ENV
from tests.integration.jobs import TEST_METHOD, TEST_MODELS, TEST_PIPELINE, sample_shards
from tests.integration.test_job_resume import run_job

pytestmark = [pytest.mark.isolated, pytest.mark.slow]

SHARDS = 2
# 128 (dlib) or 512 (ArcFace) numbers in a row; fewer than 100 in a row is anything but an embedding.
VECTOR_RUN = re.compile(rb"(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\s*,\s*){99,}-?\d")


def config_file(folder: Path, name: str, bucket: str, **changes: Any) -> Path:
    config = {
        "input": f"s3://{bucket}/in/part-{{00000..{SHARDS - 1:05d}}}.tar",
        "output": f"s3://{bucket}/out",
        "models": TEST_MODELS,
        "method": TEST_METHOD,
        "pipeline": TEST_PIPELINE,
        **changes,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def run(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import boto3

    folder = tmp_path_factory.mktemp("secrets")
    found = {
        "aws_access_key_id": "AKIA" + secrets.token_hex(8).upper(),
        "aws_secret_access_key": secrets.token_urlsafe(30),
        "aws_session_token": secrets.token_urlsafe(40),
        "audit_key": secrets.token_hex(32),
        "uri_password": "pw" + secrets.token_hex(12),
        "endpoint_password": "pw" + secrets.token_hex(12),
        "model_password": "pw" + secrets.token_hex(12),
        "model_token": "tok" + secrets.token_hex(12),
    }
    ray_temp = Path(tempfile.mkdtemp(prefix="rps", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {
        "AWS_ACCESS_KEY_ID": found["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": found["aws_secret_access_key"],
        "AWS_SESSION_TOKEN": found["aws_session_token"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        KEY_ENV: found["audit_key"],
        "RAY_TMPDIR": str(ray_temp),
    }
    bucket = f"raypipe-{secrets.token_hex(6)}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=found["aws_access_key_id"],
        aws_secret_access_key=found["aws_secret_access_key"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)
    for name, data in sample_shards(shards=SHARDS, per_shard=3).items():
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)

    in_uri = f"s3://AKIAUSER:{found['uri_password']}@{bucket}/in/part-00000.tar"
    endpoint = s3_server.replace("http://", f"http://admin:{found['endpoint_password']}@")
    with pytest.MonkeyPatch.context() as clean:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):  # nothing of the user's AWS setup
            clean.delenv(name, raising=False)
        # Model locations with credentials in them (unused by the tiny preset and dlib, so the job runs):
        # the stored config and the manifest must keep the locations without the credentials.
        models = TEST_MODELS | {
            "sdxl": f"https://hub:{found['model_password']}@models.example/sdxl",
            "ip_adapter": f"s3://models/ip-adapter?X-Amz-Security-Token={found['model_token']}",
            "vae": f"https://models.example/vae?X-Amz-Signature={found['model_token']}",
            "insightface": f"https://hub:{found['model_password']}@models.example/buffalo_l",
        }
        good = run_job(config_file(folder, "good", bucket, models=models), env, timeout=400)
        bad_uri = run_job(config_file(folder, "bad-uri", bucket, input=in_uri), env, timeout=120)
        bad_endpoint = run_job(
            config_file(folder, "bad-endpoint", bucket, storage={"endpoint_url": endpoint}), env, timeout=120
        )
    outputs = {
        obj["Key"]: client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        for obj in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]
    }
    printed = {path.name: path.read_bytes() for path in folder.glob("*.log")}  # each command's whole output
    ray_files = {}
    for path in ray_temp.rglob("*"):
        if path.is_file() and not path.is_symlink():
            ray_files[str(path.relative_to(ray_temp))] = path.read_bytes()
    shutil.rmtree(ray_temp, ignore_errors=True)
    yield {
        "secrets": found,
        "good": good,
        "bad_uri": bad_uri,
        "bad_endpoint": bad_endpoint,
        "outputs": outputs,
        "printed": printed,
        "ray_files": ray_files,
    }


def forms(secret: str) -> list[bytes]:
    """The ways a secret could be written down: as is, and (hex keys) as the raw key bytes."""
    found = [secret.encode()]
    if re.fullmatch(r"[0-9a-f]{64}", secret):
        found.append(bytes.fromhex(secret))
    return found


def test_the_job_ran_and_the_configs_with_secrets_were_refused(run: Any) -> None:
    code, log = run["good"]
    assert code == 0 and "signed manifest #1" in log, log
    for name in ("bad_uri", "bad_endpoint"):
        code, log = run[name]
        assert code == 2, log  # a configuration error, before anything ran
        assert "credentials" in log, log
    assert any(key.endswith(".audit.parquet") for key in run["outputs"])
    stored = yaml.safe_load(run["outputs"]["out/.raypipe/config.yaml"])
    assert stored["models"]["sdxl"] == "https://models.example/sdxl"  # kept, without its credentials
    assert stored["models"]["ip_adapter"] == "s3://models/ip-adapter?<redacted>"
    assert any(name.endswith(".log") for name in run["ray_files"]), "Ray's logs were not collected"


@pytest.mark.parametrize("where", ["outputs", "printed", "ray_files"])
def test_no_secret_appears_anywhere(run: Any, where: str) -> None:
    leaks = [
        f"{name} in {path}"
        for name, secret in run["secrets"].items()
        for path, data in run[where].items()
        for form in forms(secret)
        if form in data
    ]
    assert not leaks, leaks


def test_no_embedding_sized_vector_is_stored(run: Any) -> None:
    for key, data in run["outputs"].items():
        if key.endswith(".parquet"):
            for column, values in pq.read_table(io.BytesIO(data)).to_pydict().items():
                for value in values:
                    assert longest_number_run(value) < 100, (key, column)
        elif key.endswith((".json", ".yaml")):
            assert not VECTOR_RUN.search(data), key
            if key.endswith(".json"):
                assert longest_number_run(json.loads(data)) < 100, key


def longest_number_run(value: Any) -> int:
    """The longest list of numbers anywhere inside ``value`` (JSON strings inside it included)."""
    if isinstance(value, list):
        here = len(value) if value and all(isinstance(v, (int, float)) for v in value) else 0
        return max([here, *(longest_number_run(v) for v in value)])
    if isinstance(value, dict):
        return max([0, *(longest_number_run(v) for v in value.values())])
    if isinstance(value, str) and VECTOR_RUN.search(value.encode()):
        return 100
    return 0
