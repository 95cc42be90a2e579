"""One writer per OUTPUT: the lease a run takes before any work and gives back at its end.

``OUTPUT/.raypipe/lease.json`` names its holder (host, process, run id) and when it expires. It is
created exclusively (``O_EXCL``-style locally, a conditional PUT on S3), so of two drivers started on
one OUTPUT exactly one gets it, and the other stops before touching anything. The holder renews it
while the run goes on; a lease whose holder stopped renewing (it expired, or its process is gone from
this host) is stale and may be taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from raypipe.config import ConfigError
from raypipe.io.publish import create_exclusive, delete, is_local, publish_bytes, read_bytes
from raypipe.io.storage import redact
from raypipe.layout import LEASE_FILE, STATE_DIR, OutputLayout
from raypipe.logs import get_logger

log = get_logger(__name__)


class LeaseHeldError(ConfigError):
    """Another run holds OUTPUT's lease."""


class LeaseLostError(RuntimeError):
    """The run's lease was taken by another run while it worked: it must not publish its evidence."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    run_id: str
    started: int | None = None  # the process's start time (clock ticks since boot): pids are reused
    pid_namespace: str | None = None  # pids are only comparable within one PID namespace

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "run_id": self.run_id,
            "started": self.started,
            "pid_namespace": self.pid_namespace,
        }

    @classmethod
    def this_process(cls, run_id: str) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, run_id, _process_start(pid), _pid_namespace())


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` from /proc (Linux), or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19]) if len(fields) > 19 else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _lease_bytes(holder: Holder, ttl_s: float) -> bytes:
    now = time.time()
    body = holder.to_dict() | {"acquired": round(now, 3), "expires": round(now + ttl_s, 3), "ttl_s": ttl_s}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def _read(layout: OutputLayout) -> tuple[dict[str, Any], bytes] | None:
    """The lease and its exact bytes, or None when there is none."""
    path = layout.state(LEASE_FILE)
    try:
        data = read_bytes(layout.fs, path)
    except FileNotFoundError:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}, data  # unreadable: treated as stale (a lease is only ever written whole)
    return (value if isinstance(value, dict) else {}), data


def _stale(lease: dict[str, Any], now: float) -> str | None:
    """Why a lease no longer protects anything, or None while its holder may still be working."""
    expires = lease.get("expires")
    if not isinstance(expires, int | float):
        return "unreadable lease"
    if expires < now:
        return f"expired {now - expires:.0f}s ago"
    pid = lease.get("pid")
    same_namespace = lease.get("pid_namespace") is not None and lease.get("pid_namespace") == _pid_namespace()
    if lease.get("host") == socket.gethostname() and same_namespace and isinstance(pid, int):
        # Same host and PID namespace: the holder is alive only if a process with its pid *and* start
        # time exists (a pid alone can be reused). Elsewhere only the expiry can tell.
        started = _process_start(pid)
        if started is None or started != lease.get("started"):
            return f"its process {pid} on this host is gone"
    return None


def describe_lease(layout: OutputLayout, now: float) -> str:
    """OUTPUT's lease in words, read only (``--dry-run``)."""
    found = _read(layout)
    if found is None:
        return "free"
    held, _ = found
    holder = f"run {held.get('run_id')} on {held.get('host')} (pid {held.get('pid')})"
    stale = _stale(held, now)
    if stale is not None:
        return f"held by {holder}, but stale ({stale}): a run takes it over"
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(held["expires"])))
    return f"held by {holder}, renewed until {expires}: a run now is refused"


def _take_over(layout: OutputLayout, stale: bytes) -> None:
    """Remove the stale lease, but only if it is still the one judged stale.

    Locally the file is first renamed to a name of our own (atomic: of two drivers taking over, one
    wins), then checked; a lease that changed meanwhile is put back. On object stores the check and the
    delete are two requests: a takeover racing another takeover is best effort there.
    """
    path = layout.state(LEASE_FILE)
    if not is_local(layout.fs):
        current = _read(layout)
        if current is not None and current[1] == stale:
            delete(layout.fs, path)
        return
    local = layout.fs._strip_protocol(path)
    aside = f"{local}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(local, aside)
    except FileNotFoundError:
        return  # someone else took it over first
    with open(aside, "rb") as handle:
        taken = handle.read()
    if taken != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, local)  # not the lease we judged: give it back
    os.unlink(aside)


def acquire(layout: OutputLayout, holder: Holder, ttl_s: float) -> None:
    """Take OUTPUT's lease, or raise :class:`LeaseHeldError` naming the holder and its expiry."""
    path = layout.state(LEASE_FILE)
    for _ in range(5):
        if create_exclusive(layout.fs, path, _lease_bytes(holder, ttl_s)):
            log.debug("lease on %s taken by %s", redact(layout.root), holder)
            return
        found = _read(layout)
        if found is None:
            continue  # given back between our attempt and the read: try again
        lease, data = found
        if lease.get("run_id") == holder.run_id:
            return  # our own: a create whose answer was lost and was retried
        reason = _stale(lease, time.time())
        if reason is None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(lease["expires"])))
            raise LeaseHeldError(
                f"output: {redact(layout.root)} is being written by another run (run {lease.get('run_id')}, "
                f"process {lease.get('pid')} on {lease.get('host')}); its lease expires at {until} unless "
                f"renewed. Wait for that run, or remove {redact(layout.root)}/{STATE_DIR}/{LEASE_FILE} if you "
                "know it is dead"
            )
        log.warning("taking over a stale lease on %s (%s; was %s)", redact(layout.root), reason, lease)
        _take_over(layout, data)
    raise LeaseHeldError(f"output: {redact(layout.root)}: could not take the lease (it keeps changing hands)")


def release(layout: OutputLayout, holder: Holder) -> None:
    """Give the lease back, if it is still ours."""
    found = _read(layout)
    if found is not None and found[0].get("run_id") == holder.run_id:
        delete(layout.fs, layout.state(LEASE_FILE))


@dataclass
class HeldLease:
    """A lease this process holds; :meth:`check` before publishing anything that must be the only copy."""

    layout: OutputLayout
    holder: Holder
    lost: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if another run has taken the lease."""
        found = _read(self.layout)
        if self.lost.is_set() or found is None or found[0].get("run_id") != self.holder.run_id:
            self.lost.set()
            raise LeaseLostError(
                f"output: {redact(self.layout.root)}: another run took this run's lease while it worked; "
                "nothing more is published (rerun the same command to resume)"
            )


def _renew(held: HeldLease, ttl_s: float, stop: threading.Event) -> None:
    while not stop.wait(ttl_s / 3):
        try:
            held.check()
        except LeaseLostError as exc:
            log.error("%s", exc)
            return
        with contextlib.suppress(OSError):
            publish_bytes(held.layout.fs, held.layout.state(LEASE_FILE), _lease_bytes(held.holder, ttl_s))


@contextlib.contextmanager
def lease(layout: OutputLayout, run_id: str, ttl_s: float) -> Iterator[HeldLease]:
    """Hold OUTPUT's lease for the body of the ``with``, renewing it every ``ttl_s / 3`` seconds."""
    held = HeldLease(layout, Holder.this_process(run_id))
    acquire(layout, held.holder, ttl_s)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(held, ttl_s, stop), name="raypipe-lease", daemon=True)
    renewer.start()
    try:
        yield held
    finally:
        stop.set()
        renewer.join(timeout=5)
        if not held.lost.is_set():
            release(layout, held.holder)
