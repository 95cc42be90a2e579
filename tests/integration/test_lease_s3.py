"""The writer lease and the anchor on a real S3 protocol server: conditional PUTs (If-None-Match: *)."""

from __future__ import annotations

import pytest

from raypipe.audit.anchor import latest_checkpoint, read_checkpoint, write_checkpoint
from raypipe.audit.manifest import build_manifest
from raypipe.audit.signing import parse_key
from raypipe.io.publish import create_exclusive, read_bytes
from raypipe.io.storage import StorageOptions, filesystem
from raypipe.layout import OutputLayout
from raypipe.pipeline.lease import LeaseHeldError, lease

pytestmark = pytest.mark.isolated

KEY = parse_key(b"9c1f4e7a2b8d5036e1f7a4c9b2d8e503", "test")


@pytest.fixture
def options(s3_server: str) -> StorageOptions:
    return StorageOptions(endpoint_url=s3_server)


def test_exclusive_creation_on_s3_succeeds_once(bucket, options: StorageOptions) -> None:
    name, _ = bucket
    fs, path = filesystem(f"s3://{name}/out/.raypipe/lease.json", options)
    assert create_exclusive(fs, path, b"first")
    assert not create_exclusive(fs, path, b"second")
    assert read_bytes(fs, path) == b"first"


def test_a_second_driver_on_an_s3_output_is_refused(bucket, options: StorageOptions) -> None:
    name, _ = bucket
    layout = OutputLayout(f"s3://{name}/out", options)
    with lease(layout, "run-1", 60), pytest.raises(LeaseHeldError, match="run-1"), lease(layout, "run-2", 60):
        pass
    with lease(layout, "run-3", ttl_s=60):  # given back: the next run gets it
        pass


def test_checkpoints_on_s3_are_never_replaced(bucket, options: StorageOptions) -> None:
    name, _ = bucket
    anchor = f"s3://{name}/anchor"
    manifest = build_manifest(None, {}, {"config_hash": "c"}) | {"signature": {}}
    out = f"s3://{name}/out"
    uri = write_checkpoint(anchor, manifest, KEY, options, out)
    assert latest_checkpoint(anchor, manifest["chain_id"], options, KEY) == uri
    assert write_checkpoint(anchor, manifest, KEY, options, out) == uri  # the same checkpoint again: fine
    assert read_checkpoint(uri, options)["sequence"] == 1
    with pytest.raises(Exception, match="already holds another checkpoint 1"):
        write_checkpoint(anchor, manifest | {"created": "2030-01-01T00:00:00Z"}, KEY, options, out)
