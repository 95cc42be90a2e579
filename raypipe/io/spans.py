"""Members read again from their input tar by position, instead of being carried from stage to stage.

A sample read from an uncompressed tar knows where each member's bytes lie in it (a
:class:`MemberRef`: offset, size and the sha256 of the bytes read). Later stages that need a member
(compose, for the pixels of an image; finalize, for a member released unchanged) read it again from
the input with a :class:`SpanReader`, which checks it is still the same bytes. So a sample's bytes
travel once through the job's memory, not at every stage boundary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import IO, Any

from raypipe.io.retry import retry
from raypipe.io.storage import StorageOptions, filesystem, redact


class InputChangedError(RuntimeError):
    """An input shard is not the version the run planned (or resumed) with."""


@dataclass(frozen=True)
class MemberRef:
    """Where a member's bytes lie in its input tar, and their sha256 as read."""

    offset: int
    size: int
    sha256: str

    @classmethod
    def of(cls, span: tuple[int, int], data: bytes) -> MemberRef:
        return cls(span[0], span[1], hashlib.sha256(data).hexdigest())

    def to_dict(self) -> dict[str, Any]:
        return {"offset": self.offset, "size": self.size, "sha256": self.sha256}


class SpanReader:
    """Reads members of one input tar by position; opens it on first use. Use as a context manager.

    Reads in increasing offset order are sequential reads of the object (what finalize does); any
    order works.
    """

    def __init__(self, uri: str, options: StorageOptions) -> None:
        self.uri = uri
        self._options = options
        self._handle: IO[bytes] | None = None

    def __enter__(self) -> SpanReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def read(self, ref: MemberRef) -> bytes:
        """The member's bytes; raises :class:`InputChangedError` when they are not the bytes first read."""
        if self._handle is None:
            if not self.uri:
                raise ValueError("a member is a reference into its input shard, but no input shard was given")
            fs, path = filesystem(self.uri, self._options)
            self._handle = retry(lambda: fs.open(path, "rb"), description=f"open {redact(self.uri)}")
        handle = self._handle
        handle.seek(ref.offset)
        data = handle.read(ref.size)
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise InputChangedError(
                f"{redact(self.uri)}: the {ref.size} bytes at offset {ref.offset} are not the member read "
                "earlier in this run (the input shard changed while it was processed); rerun the same "
                "command to restart that shard"
            )
        return data
