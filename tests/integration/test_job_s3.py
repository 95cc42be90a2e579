"""The job through s3:// on moto's S3 server (loopback), read and written via s3fs, as in production."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from raypipe.pipeline.run import run
from tests.integration.jobs import job_config, parquet_tables, read_audit, sample_shards

pytestmark = [pytest.mark.isolated, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_env(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Fake credentials and the endpoint, set before Ray starts so its workers inherit them."""
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_CONFIG_FILE": str(tmp_path_factory.mktemp("aws") / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path_factory.mktemp("aws") / "none"),
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield s3_server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def ray_s3(s3_env: str) -> Iterator[None]:
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_s3_in_s3_out_matches_the_local_run(ray_s3, s3_env: str, tmp_path: Path) -> None:
    import boto3

    bucket = f"raypipe-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_env)
    client.create_bucket(Bucket=bucket)
    local_in = tmp_path / "in"
    local_in.mkdir()
    table = "train-00000-of-00001.parquet"  # a Parquet table in the same job: one shard of its own kind
    for name, data in (sample_shards(shards=2, per_shard=4) | parquet_tables(tables=1)).items():
        client.put_object(Bucket=bucket, Key=f"in/{name}", Body=data)
        (local_in / name).write_bytes(data)

    remote = run(job_config([f"s3://{bucket}/in/part-*.tar", f"s3://{bucket}/in/{table}"], f"s3://{bucket}/out"))
    local = run(job_config([str(local_in / "part-*.tar"), str(local_in / table)], str(tmp_path / "out")))
    assert remote.ok and local.ok and remote.counts == local.counts == {"anonymized": 3, "no_face": 8}
    output_table = client.get_object(Bucket=bucket, Key=f"out/{table}")["Body"].read()
    assert output_table == (tmp_path / "out" / table).read_bytes()  # streamed to S3: the same bytes

    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    for name in ("part-00000", "part-00001"):
        assert {
            f"out/{name}.tar",
            f"out/.raypipe/shards/{name}.audit.parquet",
            f"out/.raypipe/shards/{name}.done.json",
        } <= listed
        tar = client.get_object(Bucket=bucket, Key=f"out/{name}.tar")["Body"].read()
        assert tar == (tmp_path / "out" / f"{name}.tar").read_bytes()  # same bytes as the local run
        records = read_audit(
            client.get_object(Bucket=bucket, Key=f"out/.raypipe/shards/{name}.audit.parquet")["Body"].read()
        )
        assert [r["seq"] for r in records] == [0, 1, 2, 3]
        assert all(r["source_shard"] == f"s3://{bucket}/in/{name}.tar" for r in records)
    assert not [k for k in listed if "/fragments/" in k]  # fragments are folded into shards and removed


def test_a_tree_of_files_on_s3_comes_out_as_the_local_run_does(ray_s3, s3_env: str, tmp_path: Path) -> None:
    """A tree of files under a prefix (with the empty ``folder/`` object a console leaves) in, the same
    tree out under OUTPUT, byte for byte what the local run writes, and verified on S3."""
    import boto3

    from raypipe.audit.signing import parse_key
    from raypipe.audit.verify import verify_output
    from tests.unit.pipeline.test_file_trees import make_tree

    bucket = f"raypipe-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_env)
    client.create_bucket(Bucket=bucket)
    given = make_tree(tmp_path / "in")
    for name, data in given.items():
        client.put_object(Bucket=bucket, Key=f"tree/{name}", Body=data)
    client.put_object(Bucket=bucket, Key="tree/sub/", Body=b"")  # a folder placeholder: no file of the tree

    secret = "5f0c9e2a7b1d4c8e93a6f2b0d7e4c1a8"
    os.environ["RAYPIPE_AUDIT_KEY"] = secret
    try:
        remote = run(job_config(f"s3://{bucket}/tree/", f"s3://{bucket}/out"))
        local = run(job_config(str(tmp_path / "in"), str(tmp_path / "out")))
    finally:
        del os.environ["RAYPIPE_AUDIT_KEY"]
    assert remote.counts == local.counts == {"anonymized": 1, "failed": 1, "no_face": 2}
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    released = sorted(k.removeprefix("out/") for k in listed if "/.raypipe/" not in f"/{k}")
    assert released == ["astronaut.json", "astronaut.png", "sub/coffee.jpg", "sub/notes.txt"]
    for name in released:
        assert (
            client.get_object(Bucket=bucket, Key=f"out/{name}")["Body"].read() == (tmp_path / "out" / name).read_bytes()
        )
    verified = verify_output(f"s3://{bucket}/out", parse_key(secret.encode(), "test"))
    assert verified.ok, verified.problems
