"""One input sample on its way through the stages, and how it travels between them.

Ray Data rows carry ``shard``, ``seq`` and ``task``: the :class:`SampleTask` pickled by raypipe
itself. Only raypipe's own objects are ever pickled or unpickled; member bytes stay opaque bytes
inside the task (they are never deserialized).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from raypipe.io.spans import MemberRef, SpanReader
from raypipe.records import FaceRecord, Status

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from raypipe.anonymize.pipeline import PreparedFace
    from raypipe.images import Picture


@dataclass
class ImageWork:
    """One image member of a sample: decoded pixels and its faces (memory only, never persisted).

    Only the main picture's pixels travel; the member's other pictures (``pictures``: an MPO's further
    frames, embedded thumbnails, the alpha channel) are described by where their bytes lie in the member
    and are decoded only while they are scanned; the stored orientation is derived from ``rgb``.
    """

    member: int  # index into SampleTask.members
    format: str  # the format an anonymized image is written in
    rgb: np.ndarray | None = None  # dropped after detection (SampleTask.slim), decoded again at compose
    orientation: int = 1  # EXIF orientation applied to make ``rgb`` upright (1: stored upright)
    pictures: list[Picture] = field(default_factory=list)
    release: bytes | None = None  # what to release when unchanged, if not the member's bytes (re-encoded)
    faces: list[PreparedFace] = field(default_factory=list)
    outputs: list[np.ndarray | None] = field(default_factory=list)


@dataclass
class SampleTask:
    shard: str  # input shard URI
    shard_name: str
    seq: int
    key: str
    members: list[tuple[str, bytes]]  # after slim(), names with empty bytes where ``refs`` can read them
    input_sha256: str  # of the sample's members; for the end-of-shard marker: of the whole input shard
    input_id: str = ""  # JSON identity of the input shard (size, ETag or mtime) as planned
    # The input shard as the user gave it (credentials included): for reading members again. It travels
    # in memory only; records and fragments hold the redacted ``shard``.
    source_uri: str = field(default="", repr=False)
    refs: list[MemberRef] | None = None  # where each member lies in the input (uncompressed tars only)
    slimmed: bool = False  # member bytes dropped: read them again through ``refs``
    end_of_shard: bool = False  # a marker row after a shard's last sample: ``seq`` is the sample count
    status: Status | None = None  # set as soon as the outcome is final (e.g. failed at decode)
    error: str | None = None
    error_step: str | None = None
    images: list[ImageWork] = field(default_factory=list)
    # What is released: a member's new bytes, or a reference to its unchanged input bytes.
    out_members: list[tuple[str, bytes | MemberRef]] | None = None
    faces: list[FaceRecord] = field(default_factory=list)
    missed_faces: int = 0
    # This sample's attribute prompt from its metadata (method.attribute_from; "": none), read where its
    # faces are found; None: not read, the job's method.attribute_prompt applies.
    attribute_prompt: str | None = None
    # A table's row: the value of the column method.attribute_from names ("column:NAME"), and why there
    # is none if the table cannot give one. Resolved, like a member's, only for samples with faces.
    attribute_column: tuple[str | None, str] = (None, "")
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # node, device, models, weight hashes

    def fail(self, step: str, error: str, status: Status = Status.FAILED) -> None:
        """Record a final outcome for this sample (the first one wins)."""
        if self.status is None:
            self.status, self.error_step, self.error = status, step, error

    def slim(self) -> None:
        """Drop what later stages can rebuild: decoded pixels and other pictures always, member bytes
        when ``refs`` can read them again. What goes on is names, faces and small fields."""
        for image in self.images:
            image.rgb, image.pictures, image.release = None, [], None
        if self.refs is not None:  # also after load_members read some back (compose): they go no further
            self.members = [(name, b"") for name, _ in self.members]
            self.slimmed = True

    def load_members(self, indices: list[int], reader: SpanReader) -> None:
        """Read the bytes of the given members back from the input (a no-op for members still held)."""
        if not self.slimmed:
            return
        assert self.refs is not None
        for index in indices:
            name, data = self.members[index]
            if not data and self.refs[index].size:
                self.members[index] = (name, reader.read(self.refs[index]))

    def unchanged(self, index: int) -> tuple[str, bytes | MemberRef]:
        """Member ``index`` released as it is: its reference into the input when it has one."""
        name, data = self.members[index]
        return (name, self.refs[index]) if self.refs is not None else (name, data)

    @property
    def pending(self) -> bool:
        """Still being worked on: no final status yet (end-of-shard markers are never pending)."""
        return self.status is None and not self.end_of_shard

    @classmethod
    def end_marker(cls, shard: str, shard_name: str, count: int) -> SampleTask:
        return cls(
            shard=shard,
            shard_name=shard_name,
            seq=count,
            key="",
            members=[],
            input_sha256="",
            end_of_shard=True,
        )


def pack(task: SampleTask) -> dict[str, Any]:
    return {"shard": task.shard_name, "seq": task.seq, "task": pickle.dumps(task, protocol=5)}


def unpack_batch(batch: pa.Table) -> list[SampleTask]:
    return [pickle.loads(blob) for blob in batch.column("task").to_pylist()]


def pack_batch(tasks: list[SampleTask]) -> dict[str, list[Any]]:
    rows = [pack(t) for t in tasks]
    return {name: [r[name] for r in rows] for name in ("shard", "seq", "task")}
