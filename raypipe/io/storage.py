"""Storage URIs and fsspec filesystems: the one place that turns a path or URI into a filesystem.

Credentials are never passed through here: s3fs/gcsfs find them through the standard provider
chains (environment, profile files, instance metadata, workload identity).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from raypipe.logs import get_logger

logger = get_logger(__name__)

LOCAL_PROTOCOLS = frozenset({"file", "local"})
S3_PROTOCOLS = frozenset({"s3", "s3a"})
GCS_PROTOCOLS = frozenset({"gs", "gcs"})
AZURE_PROTOCOLS = frozenset({"az", "abfs", "abfss", "adl"})

# Optional packages that provide fsspec protocols, named in the error a user sees.
_PROTOCOL_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs (pip install 'raypipe[gcs]')",
    "gcs": "gcsfs (pip install 'raypipe[gcs]')",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}


class StorageError(RuntimeError):
    """A URI cannot be served by any available filesystem."""


class UnsupportedURIError(StorageError, ValueError):
    """The URI names a protocol that fsspec does not know."""


class MissingDependencyError(StorageError, ImportError):
    """The URI's protocol needs an optional package that is not installed."""


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage. Holds no secrets.

    Unset fields fall back to the standard AWS environment variables when the options are turned into
    filesystem arguments (see :meth:`resolve`), so a job configured only through the environment works.
    """

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anonymous: bool = False
    # How hard each S3 request tries (botocore "standard" retries: 5xx, throttling, timeouts, dropped
    # connections, with backoff) before raypipe's own retries (raypipe.io.retry) see the error.
    max_attempts: int = 5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # a request that stalls this long is abandoned and retried

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _check_endpoint(self.endpoint_url, "endpoint_url")
        if not (isinstance(self.max_attempts, int) and not isinstance(self.max_attempts, bool)) or not (
            1 <= self.max_attempts <= 50
        ):
            raise ValueError(f"max_attempts must be an integer in [1, 50], got {self.max_attempts!r}")
        for name in ("connect_timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")

    def resolve(self, environ: Mapping[str, str] | None = None) -> StorageOptions:
        """Return a copy with unset fields filled from ``environ`` (default: ``os.environ``).

        ``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL`` (the botocore order);
        ``AWS_REGION`` wins over ``AWS_DEFAULT_REGION``; the profile comes from ``AWS_PROFILE``.
        """
        env = os.environ if environ is None else environ
        endpoint = self.endpoint_url or _first(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        if endpoint is not None and self.endpoint_url is None:
            _check_endpoint(endpoint, "AWS_ENDPOINT_URL(_S3)")
        return replace(
            self,
            endpoint_url=endpoint,
            region=self.region or _first(env, "AWS_REGION", "AWS_DEFAULT_REGION"),
            profile=self.profile or _first(env, "AWS_PROFILE"),
        )

    def to_fsspec(self, protocol: str | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Keyword arguments for the fsspec filesystem class of ``protocol``.

        The endpoint is passed explicitly even when it comes from the environment, so it works whatever
        botocore version is installed (older ones ignore ``AWS_ENDPOINT_URL``).
        """
        proto = (protocol or "file").lower()
        if proto in LOCAL_PROTOCOLS or proto == "memory":
            return {}
        resolved = self.resolve(environ)
        if proto in S3_PROTOCOLS:
            return _s3_kwargs(resolved)
        if proto in GCS_PROTOCOLS:
            return _gcs_kwargs(resolved)
        if proto in AZURE_PROTOCOLS:
            return {"anon": True} if resolved.anonymous else {}
        return {}


def _check_endpoint(url: str, source: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{source} must be an http:// or https:// URL, got {redact(url)!r}")
    if "@" in parts.netloc:
        raise ValueError(f"{source} must not contain credentials; use the AWS credential chain instead")


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def _s3_kwargs(options: StorageOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"anon": options.anonymous, "config_kwargs": _botocore_config(options)}
    if options.endpoint_url:
        kwargs["endpoint_url"] = options.endpoint_url
    if options.region:
        kwargs["client_kwargs"] = {"region_name": options.region}
    if options.profile and not options.anonymous:
        kwargs["profile"] = options.profile
    return kwargs


def _botocore_config(options: StorageOptions) -> dict[str, Any]:
    return {
        "retries": {"mode": "standard", "max_attempts": options.max_attempts},
        "connect_timeout": options.connect_timeout_s,
        "read_timeout": options.read_timeout_s,
    }


def _gcs_kwargs(options: StorageOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if options.anonymous:
        kwargs["token"] = "anon"
    if options.endpoint_url:
        kwargs["endpoint_url"] = options.endpoint_url
    return kwargs


def protocol_of(uri_or_path: str) -> str | None:
    """The URI's protocol (``"s3"``, ``"gs"``, ...), or ``None`` for a plain local path."""
    protocol, _ = split_protocol(uri_or_path)
    return protocol.lower() if protocol else None


def is_local(uri_or_path: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    protocol = protocol_of(uri_or_path)
    return protocol is None or protocol in LOCAL_PROTOCOLS


def has_credentials(uri: str) -> bool:
    """True when a URI carries credentials: ``user:password@`` for any scheme, or any ``user@`` on s3/gs
    (bucket names cannot hold ``@``; Azure's ``container@account`` is a plain address)."""
    if "://" not in uri:
        return False
    parts = urlsplit(uri)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if not at:
        return False
    return ":" in userinfo or (parts.scheme.lower() in S3_PROTOCOLS | GCS_PROTOCOLS)


def check_no_credentials(uri: str, what: str) -> None:
    """Refuse a URI with credentials in it (they would end up in logs, error messages and the audit)."""
    if has_credentials(uri):
        raise CredentialsInURIError(
            f"{what}: {redact(uri)} has credentials in it (user:password@); they are refused so they cannot"
            " leak into logs or the audit. Give them through the provider's credential chain instead"
            " (environment variables, profile, instance or workload identity)"
        )


class CredentialsInURIError(StorageError, ValueError):
    """A URI holds credentials (``user:password@``)."""


def filesystem(uri_or_path: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem serving ``uri_or_path`` and the path inside it.

    Local paths come back absolute; object-store paths come back without their scheme
    (``s3://bucket/key`` -> ``bucket/key``), as fsspec methods expect them. A URI with credentials in
    it is refused (:class:`CredentialsInURIError`).
    """
    protocol = protocol_of(uri_or_path)
    options = options or StorageOptions()
    check_no_credentials(uri_or_path, "storage")
    if protocol is None or protocol in LOCAL_PROTOCOLS:
        fs = LocalFileSystem()
        return fs, fs._strip_protocol(uri_or_path)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        package = _PROTOCOL_PACKAGES.get(protocol, "the package that provides it")
        raise MissingDependencyError(
            f"{redact(uri_or_path)}: protocol {protocol!r} needs {package}, which is not installed ({exc})"
        ) from exc
    except ValueError as exc:
        raise UnsupportedURIError(f"{redact(uri_or_path)}: unknown storage protocol {protocol!r}") from exc
    try:
        fs = cls(**options.to_fsspec(protocol))
    except TypeError as exc:  # a protocol that needs its address as arguments (ftp, sftp, ...)
        raise UnsupportedURIError(
            f"{redact(uri_or_path)}: raypipe cannot open {protocol}:// locations ({exc}); use a local path, "
            "s3:// or gs://"
        ) from exc
    return fs, cls._strip_protocol(uri_or_path)


def to_uri(scheme: str | None, fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of :func:`filesystem`: a full URI for ``path`` on ``fs`` keeping the user's ``scheme``.

    Local paths are returned as plain absolute paths.
    """
    if scheme is None or scheme in LOCAL_PROTOCOLS or isinstance(fs, LocalFileSystem):
        return path
    return f"{scheme}://{path.lstrip('/')}"


def join(base_uri: str, *parts: str) -> str:
    """Join path parts onto a path or URI with ``/`` (``join("s3://b/out/", "x.tar")`` -> ``s3://b/out/x.tar``)."""
    pieces = [p.strip("/") for p in parts if p and p.strip("/")]
    if not pieces:
        return base_uri
    if not base_uri:
        return "/".join(pieces)
    base = base_uri if base_uri.endswith("/") else base_uri + "/"
    return base + "/".join(pieces)


def basename(uri: str) -> str:
    """The last path component of a path or URI, ignoring a trailing slash."""
    _, path = split_protocol(uri)
    return posixpath.basename(path.rstrip("/"))


# Only these schemes carry a query; elsewhere a "?" is a glob character (s3://b/part-0000?.tar) unless
# key=value pairs follow it (a signed URL's X-Amz-Signature, an Azure SAS token).
_QUERY_SCHEMES = frozenset({"http", "https", "ws", "wss", "ray"})
REDACTED = "<redacted>"


def redact(uri: str) -> str:
    """A URI safe to log or store: drops ``user:password@`` (and any ``user@`` but Azure's
    ``container@account``) and replaces a query, which may hold signatures or tokens, with ``<redacted>``.

    Plain paths and a glob ``?`` in an object-store or file URI are kept as they are.
    """
    if "://" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    end = min((i for i, char in enumerate(rest) if char in "/?#"), default=len(rest))
    authority, rest = rest[:end], rest[end:]  # rest: path, query and fragment exactly as given
    userinfo, at, host = authority.rpartition("@")
    netloc = authority if at and scheme.lower() in AZURE_PROTOCOLS and ":" not in userinfo else host
    path, question, query = rest.partition("?")
    if question and (scheme.lower() in _QUERY_SCHEMES or "=" in query or "&" in query):
        # The fragment goes too: after a query it cannot be told apart from one.
        return f"{scheme}://{netloc}{path}?{REDACTED}"
    return f"{scheme}://{netloc}{rest}"


def redact_all(value: Any) -> Any:
    """``value`` (a resolved config: dicts, lists, strings, numbers) with every URI in it redacted.

    Every string is passed through :func:`redact`, so no field can be forgotten: a hub id or a plain
    path comes back unchanged, a URI without its credentials.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_all(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(item) for item in value)
    return value


def location(uri_or_path: str) -> tuple[str, str]:
    """Where a path or URI points, for comparing locations: ``(storage, path)``.

    Local paths (and ``file://``) become absolute with symlinks resolved (storage ``"local"``); s3a
    counts as s3, gcs as gs, abfs/abfss/adl as az (the ``@account`` part is dropped); credentials,
    queries, ``.`` / ``..`` and trailing slashes are dropped.
    """
    protocol = protocol_of(uri_or_path)
    if protocol is None or protocol in LOCAL_PROTOCOLS:
        path = split_protocol(uri_or_path)[1] if protocol else uri_or_path
        return "local", os.path.realpath(os.path.expanduser(path))
    family = (
        "s3"
        if protocol in S3_PROTOCOLS
        else "gs"
        if protocol in GCS_PROTOCOLS
        else "az"
        if protocol in AZURE_PROTOCOLS
        else protocol
    )
    authority, _, path = redact(uri_or_path).partition("://")[2].partition("/")
    if family == "az":
        authority = authority.partition("@")[0]  # abfs://container@account/path names the container
    return family, posixpath.normpath(f"/{authority}/{path}").rstrip("/") or "/"


def is_within(inner: str, outer: str) -> bool:
    """True when the location ``inner`` is ``outer`` or lies under it, compared component by component
    (``/data/in-held`` is not under ``/data/in``)."""
    inner_storage, inner_path = location(inner)
    outer_storage, outer_path = location(outer)
    if inner_storage != outer_storage:
        return False
    return inner_path == outer_path or inner_path.startswith(outer_path.rstrip("/") + "/")
