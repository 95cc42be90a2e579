"""Storage for raypipe jobs: URIs and filesystems, shard listing, WebDataset tars, atomic publish,
retries and a local cache for object-store files. Everything goes through fsspec; nothing here uses Ray.
"""

from __future__ import annotations

from raypipe.io.cache import default_cache_dir, materialize
from raypipe.io.publish import delete, exists, publish_bytes, read_bytes
from raypipe.io.retry import is_transient, retry
from raypipe.io.shards import MissingShardsError, ShardSpecError, expand_braces, expand_shards, shard_name
from raypipe.io.storage import (
    MissingDependencyError,
    StorageError,
    StorageOptions,
    UnsupportedURIError,
    basename,
    filesystem,
    is_local,
    join,
    redact,
)
from raypipe.io.tars import (
    Sample,
    TarProblem,
    TarReadError,
    iter_samples,
    read_tar,
    split_member_name,
    tar_bytes,
    write_tar,
)

__all__ = [
    "MissingDependencyError",
    "MissingShardsError",
    "Sample",
    "ShardSpecError",
    "StorageError",
    "StorageOptions",
    "TarProblem",
    "TarReadError",
    "UnsupportedURIError",
    "basename",
    "default_cache_dir",
    "delete",
    "exists",
    "expand_braces",
    "expand_shards",
    "filesystem",
    "is_local",
    "is_transient",
    "iter_samples",
    "join",
    "materialize",
    "publish_bytes",
    "read_bytes",
    "read_tar",
    "redact",
    "retry",
    "shard_name",
    "split_member_name",
    "tar_bytes",
    "write_tar",
]
