from __future__ import annotations

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from raypipe.io.storage import (
    MissingDependencyError,
    StorageOptions,
    UnsupportedURIError,
    basename,
    filesystem,
    is_within,
    join,
    location,
    redact,
    redact_all,
)

AWS_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)
RETRIES = {"retries": {"mode": "standard", "max_attempts": 5}, "connect_timeout": 10.0, "read_timeout": 60.0}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_s3_options_from_explicit_fields(clean_env: pytest.MonkeyPatch) -> None:
    options = StorageOptions(endpoint_url="http://127.0.0.1:9000", region="eu-west-1", profile="team")
    assert options.to_fsspec("s3") == {
        "anon": False,
        "config_kwargs": RETRIES,
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"region_name": "eu-west-1"},
        "profile": "team",
    }


def test_s3_options_fall_back_to_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    clean_env.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    clean_env.setenv("AWS_DEFAULT_REGION", "us-east-2")
    clean_env.setenv("AWS_REGION", "eu-central-1")
    clean_env.setenv("AWS_PROFILE", "ci")
    kwargs = StorageOptions().to_fsspec("s3")
    assert kwargs["endpoint_url"] == "http://s3-specific:2"
    assert kwargs["client_kwargs"] == {"region_name": "eu-central-1"}
    assert kwargs["profile"] == "ci"


def test_generic_endpoint_and_default_region_are_used_alone(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    clean_env.setenv("AWS_DEFAULT_REGION", "us-east-2")
    resolved = StorageOptions().resolve()
    assert resolved.endpoint_url == "http://generic:1"
    assert resolved.region == "us-east-2"


def test_explicit_fields_win_over_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", "http://from-env:1")
    clean_env.setenv("AWS_REGION", "eu-central-1")
    options = StorageOptions(endpoint_url="http://explicit:2", region="us-west-2")
    assert options.resolve() == options


def test_no_environment_gives_plain_s3_options(clean_env: pytest.MonkeyPatch) -> None:
    assert StorageOptions().to_fsspec("s3") == {"anon": False, "config_kwargs": RETRIES}


def test_anonymous_s3_and_gcs(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_PROFILE", "ignored-when-anonymous")
    assert StorageOptions(anonymous=True).to_fsspec("s3a") == {"anon": True, "config_kwargs": RETRIES}
    assert StorageOptions(anonymous=True).to_fsspec("gs") == {"token": "anon"}
    assert StorageOptions().to_fsspec("gs") == {}


def test_local_and_memory_need_no_options(clean_env: pytest.MonkeyPatch) -> None:
    options = StorageOptions(endpoint_url="http://x:1", anonymous=True)
    assert options.to_fsspec(None) == {}
    assert options.to_fsspec("file") == {}
    assert options.to_fsspec("memory") == {}


def test_options_hold_no_credential_fields() -> None:
    fields = set(StorageOptions.__dataclass_fields__)
    assert fields == {
        "endpoint_url",
        "region",
        "profile",
        "anonymous",
        "max_attempts",
        "connect_timeout_s",
        "read_timeout_s",
    }


def test_filesystem_for_local_paths_and_file_uris(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = filesystem("data/a.tar")
    assert isinstance(fs, LocalFileSystem)
    assert path == str(tmp_path / "data" / "a.tar")
    fs, path = filesystem(f"file://{tmp_path}/b.tar")
    assert isinstance(fs, LocalFileSystem)
    assert path == f"{tmp_path}/b.tar"


def test_filesystem_for_s3_strips_the_scheme(clean_env: pytest.MonkeyPatch) -> None:
    fs, path = filesystem("s3://bucket/prefix/a.tar", StorageOptions(endpoint_url="http://127.0.0.1:1"))
    assert "s3" in fs.protocol
    assert path == "bucket/prefix/a.tar"
    assert fs.endpoint_url == "http://127.0.0.1:1"


def test_filesystem_for_other_fsspec_protocols() -> None:
    fs, path = filesystem("memory://bucket/x.tar")
    assert isinstance(fs, MemoryFileSystem)
    assert path == "/bucket/x.tar"


def test_unknown_protocol_names_the_uri() -> None:
    with pytest.raises(UnsupportedURIError, match=r"nosuchproto://bucket/x\.tar"):
        filesystem("nosuchproto://bucket/x.tar")


def test_missing_optional_package_names_uri_and_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(protocol: str) -> None:
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr("fsspec.get_filesystem_class", not_installed)
    with pytest.raises(MissingDependencyError, match=r"gs://bucket/x\.tar.*gcsfs") as caught:
        filesystem("gs://bucket/x.tar")
    assert isinstance(caught.value, ImportError)


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://b/out", ("x.tar",), "s3://b/out/x.tar"),
        ("s3://b/out/", ("/audit/", "x.json"), "s3://b/out/audit/x.json"),
        ("/data/out", ("a", "b.tar"), "/data/out/a/b.tar"),
        ("s3://b/out", (), "s3://b/out"),
        ("", ("a", "b"), "a/b"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(base, *parts) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("s3://b/in/data-00001.tar", "data-00001.tar"), ("s3://b/models/tiny/", "tiny"), ("/x/y.tar", "y.tar")],
)
def test_basename(uri: str, expected: str) -> None:
    assert basename(uri) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://key:secret@bucket/a.tar", "s3://bucket/a.tar"),
        ("https://user:p%40ss@host:8443/x?X-Amz-Signature=abc", "https://host:8443/x?<redacted>"),
        ("s3://bucket/a.tar", "s3://bucket/a.tar"),
        ("/local/path.tar", "/local/path.tar"),
        ("ray://admin:secret@head:10001", "ray://head:10001"),
        ("https://secret@github.com/org/repo", "https://github.com/org/repo"),  # a token as the user name
        ("s3://bucket/w?X-Amz-Security-Token=secret&X-Amz-Signature=secret", "s3://bucket/w?<redacted>"),
        ("https://hub.example/m?token=secret#secret", "https://hub.example/m?<redacted>"),
        ("abfs://user:secret@account.dfs.core.windows.net/x", "abfs://account.dfs.core.windows.net/x"),
        # Not credentials: a glob "?" in an object-store URI and Azure's container@account address.
        ("s3://bucket/part-0000?.tar", "s3://bucket/part-0000?.tar"),
        ("abfs://container@account.dfs.core.windows.net/x", "abfs://container@account.dfs.core.windows.net/x"),
    ],
)
def test_redact_removes_credentials(uri: str, expected: str) -> None:
    assert redact(uri) == expected
    assert "secret" not in redact(uri)


def test_redact_all_reaches_every_uri_of_a_resolved_config() -> None:
    resolved = {
        "input": ["s3://k:secret@b/in/{0..9}.tar", "/local/in.tar"],
        "pipeline": {"address": "ray://u:secret@head:10001", "batch_size": 8, "progress": True},
        "models": {"sdxl": "https://u:secret@hub/sdxl", "ip_adapter": "s3://b/ip?X-Amz-Security-Token=secret"},
        "audit": {"quarantine_output": "s3://u:secret@held/", "key_file": None, "reid_threshold": 0.9},
        "storage": {"endpoint_url": "http://u:secret@minio:9000", "anonymous": False},
        "actors": {"a100": 1.0},
    }
    redacted = redact_all(resolved)
    assert "secret" not in repr(redacted)
    assert redacted["input"] == ["s3://b/in/{0..9}.tar", "/local/in.tar"]
    assert redacted["pipeline"] == {"address": "ray://head:10001", "batch_size": 8, "progress": True}
    assert redacted["audit"]["key_file"] is None and redacted["actors"] == {"a100": 1.0}
    assert redact_all(("s3://u:secret@b/x",)) == ("s3://b/x",)


@pytest.mark.parametrize(
    ("inner", "outer", "within"),
    [
        ("/data/in", "/data/in/", True),
        ("/data/in/./held/", "/data/in", True),
        ("/data/in-held", "/data/in", False),  # component by component, not by string prefix
        ("/data/x/../in", "/data/in", True),
        ("file:///data/in/q", "/data/in", True),
        ("s3a://bucket/in/q", "s3://bucket/in", True),
        ("s3://bucket/in2", "s3://bucket/in", False),
        ("gcs://bucket/in", "gs://bucket/in/", True),
        ("s3://bucket/in", "/bucket/in", False),  # another storage
        ("s3://anything", "s3://", True),
    ],
)
def test_locations_compare_normalised(inner: str, outer: str, within: bool) -> None:
    assert is_within(inner, outer) is within


def test_local_locations_resolve_symlinks(tmp_path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert location(str(tmp_path / "link" / "q")) == location(str(tmp_path / "real" / "q"))
    assert is_within(str(tmp_path / "link"), str(tmp_path / "real"))


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "ftp://host", "http://key:secret@host:9000"])
def test_bad_endpoints_are_rejected_without_echoing_secrets(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint_url") as caught:
        StorageOptions(endpoint_url=endpoint)
    assert "secret" not in str(caught.value)


def test_bad_endpoint_from_environment_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", "localhost:9000")
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        StorageOptions().to_fsspec("s3")


def test_retries_and_timeouts_are_configurable_and_checked() -> None:
    options = StorageOptions(max_attempts=3, connect_timeout_s=1, read_timeout_s=2.5)
    assert options.to_fsspec("s3")["config_kwargs"] == {
        "retries": {"mode": "standard", "max_attempts": 3},
        "connect_timeout": 1,
        "read_timeout": 2.5,
    }
    with pytest.raises(ValueError, match="max_attempts"):
        StorageOptions(max_attempts=0)
    with pytest.raises(ValueError, match="read_timeout_s"):
        StorageOptions(read_timeout_s=0)


@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("s3://AKIAX:s3cr3t@bucket/in/a.tar", True),
        ("s3://s3cr3t@bucket/a.tar", True),
        ("gs://s3cr3t@bucket/a.tar", True),
        ("https://user:s3cr3t@host/x", True),
        ("abfs://container@account.dfs.core.windows.net/a.tar", False),  # Azure's address form
        ("s3://bucket/a@b.tar", False),
        ("/local/user:pw@x/a.tar", False),
    ],
)
def test_uris_with_credentials_are_refused_without_echoing_them(uri: str, refused: bool) -> None:
    from raypipe.io.storage import CredentialsInURIError, check_no_credentials, has_credentials

    assert has_credentials(uri) is refused
    if refused:
        with pytest.raises(CredentialsInURIError) as caught:
            filesystem(uri)
        assert "s3cr3t" not in str(caught.value)
        with pytest.raises(CredentialsInURIError, match=r"^input: "):
            check_no_credentials(uri, "input")
