"""raypipe.io against a real S3 protocol server (moto in server mode) on loopback, through s3fs.

Runs only inside a loopback-only network namespace (see tests/conftest.py).
"""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path

import pytest

from raypipe.io import (
    MissingShardsError,
    Sample,
    StorageOptions,
    exists,
    expand_shards,
    filesystem,
    iter_samples,
    materialize,
    publish_bytes,
    read_bytes,
    tar_bytes,
)

pytestmark = pytest.mark.isolated


@pytest.fixture
def options(s3_server: str) -> StorageOptions:
    return StorageOptions(endpoint_url=s3_server)


class Recorder:
    """moto's server-side request log."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _post(self, action: str) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/recorder/{action}", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def __enter__(self) -> Recorder:
        self._post("reset-recording")
        self._post("start-recording")
        return self

    def __exit__(self, *exc: object) -> None:
        self._post("stop-recording")

    def requests(self) -> list[tuple[str, str]]:
        with urllib.request.urlopen(f"{self.url}/moto-api/recorder/download-recording", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        entries = [json.loads(line) for line in lines if line.strip()]
        return [(e["method"], e["url"]) for e in entries if "/moto-api/" not in e["url"]]


def put_objects(client, bucket_name: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        client.put_object(Bucket=bucket_name, Key=key, Body=data)


def test_brace_pattern_and_glob_on_s3(bucket, options: StorageOptions) -> None:
    name, client = bucket
    put_objects(client, name, {f"in/data-{i:05d}.tar": b"t" for i in range(12)})
    put_objects(client, name, {"in/data-00000.json": b"{}", "in/sub/deeper.tar": b"t"})

    braced = expand_shards(f"s3://{name}/in/data-{{00000..00011}}.tar", options)
    assert braced == [f"s3://{name}/in/data-{i:05d}.tar" for i in range(12)]
    assert expand_shards(f"s3://{name}/in/*.tar", options) == braced
    assert expand_shards(f"s3://{name}/in/data-0000[0-2].tar", options) == braced[:3]
    assert expand_shards(f"s3://{name}/in/**/*.tar", options) == [*braced, f"s3://{name}/in/sub/deeper.tar"]

    with pytest.raises(MissingShardsError) as caught:
        expand_shards(f"s3://{name}/in/data-{{00010..00013}}.tar", options)
    assert caught.value.missing == [f"s3://{name}/in/data-00012.tar", f"s3://{name}/in/data-00013.tar"]


def test_tars_written_and_read_through_s3fs(bucket, options: StorageOptions) -> None:
    name, _ = bucket
    samples = [
        Sample("000001", [("000001.jpg", os.urandom(70_000)), ("000001.json", b'{"id": 1}')]),
        Sample("a/000002", [("a/000002.seg.png", os.urandom(5_000))]),
    ]
    fs, path = filesystem(f"s3://{name}/out/data-00000.tar", options)
    publish_bytes(fs, path, tar_bytes(samples))
    with fs.open(path, "rb") as handle:
        assert list(iter_samples(handle, source=path)) == samples
    assert read_bytes(fs, path) == tar_bytes(samples)


def test_publish_is_exactly_one_put_of_the_complete_object(bucket, s3_server: str, options) -> None:
    name, client = bucket
    data = os.urandom(6 * 2**20)  # bigger than s3fs's default 5 MiB blocks
    fs, path = filesystem(f"s3://{name}/out/audit/data-00000.parquet", options)
    with Recorder(s3_server) as recorder:
        publish_bytes(fs, path, data)
    requests = recorder.requests()
    assert requests == [("PUT", f"{s3_server}/{name}/out/audit/data-00000.parquet")]
    head = client.head_object(Bucket=name, Key="out/audit/data-00000.parquet")
    assert head["ContentLength"] == len(data)
    assert client.get_object(Bucket=name, Key="out/audit/data-00000.parquet")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    assert exists(fs, path)


def test_materialize_downloads_a_prefix_once(bucket, options: StorageOptions, tmp_path: Path) -> None:
    name, client = bucket
    files = {
        "models/tiny/config.json": b'{"dim": 8}',
        "models/tiny/unet/diffusion_pytorch_model.safetensors": os.urandom(4096),
        "models/tiny-other/config.json": b"a sibling prefix, not part of tiny",
    }
    put_objects(client, name, files)
    cache = tmp_path / "cache"

    local = Path(materialize(f"s3://{name}/models/tiny", str(cache), options))
    assert local.name == "tiny"
    copied = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert copied == ["config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert (local / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == files[
        "models/tiny/unet/diffusion_pytorch_model.safetensors"
    ]
    mtimes = {p: p.stat().st_mtime_ns for p in local.rglob("*")}

    # The objects are gone: only the local cache can answer, with the same files untouched.
    client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in files]})
    again = Path(materialize(f"s3://{name}/models/tiny", str(cache), options))
    assert again == local
    assert {p: p.stat().st_mtime_ns for p in local.rglob("*")} == mtimes


def test_aws_endpoint_url_alone_is_enough(bucket, s3_server: str, aws_env: pytest.MonkeyPatch) -> None:
    name, client = bucket
    aws_env.setenv("AWS_ENDPOINT_URL", s3_server)
    options = StorageOptions()  # no endpoint: it comes from the environment

    put_objects(client, name, {"in/a-0.tar": tar_bytes([Sample("k", [("k.txt", b"hello")])])})
    shards = expand_shards(f"s3://{name}/in/a-{{0..0}}.tar", options)
    assert shards == [f"s3://{name}/in/a-0.tar"]

    fs, path = filesystem(shards[0], options)
    assert fs.endpoint_url == s3_server
    assert list(iter_samples(io.BytesIO(read_bytes(fs, path)))) == [Sample("k", [("k.txt", b"hello")])]
    publish_bytes(fs, f"{name}/out/a-0.tar", b"done")
    assert client.get_object(Bucket=name, Key="out/a-0.tar")["Body"].read() == b"done"
