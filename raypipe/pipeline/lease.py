"""One writer per OUTPUT: the lease a run takes before any work and gives back at its end.

``OUTPUT/_raypipe/lease.json`` names its holder (host, process, run id) and when it expires. It is
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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from raypipe.config import ConfigError
from raypipe.io.publish import create_exclusive, delete, exists, publish_bytes, read_bytes
from raypipe.io.storage import redact
from raypipe.layout import OutputLayout
from raypipe.logs import get_logger

log = get_logger(__name__)

LEASE_FILE = "lease.json"


class LeaseHeldError(ConfigError):
    """Another run holds OUTPUT's lease."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    run_id: str
    started: int | None = None  # the process's start time (clock ticks since boot): pids are reused

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "run_id": self.run_id, "started": self.started}


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` from /proc (Linux), or None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19]) if len(fields) > 19 else None


def _lease_bytes(holder: Holder, ttl_s: float) -> bytes:
    now = time.time()
    body = holder.to_dict() | {"acquired": round(now, 3), "expires": round(now + ttl_s, 3), "ttl_s": ttl_s}
    return json.dumps(body, indent=2, sort_keys=True).encode()


def _read(layout: OutputLayout) -> dict[str, Any] | None:
    path = layout.state(LEASE_FILE)
    try:
        value = json.loads(read_bytes(layout.fs, path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {}  # unreadable: treated as stale (a lease is only ever written whole)
    return value if isinstance(value, dict) else {}


def _stale(lease: dict[str, Any], now: float) -> str | None:
    """Why a lease no longer protects anything, or None while its holder may still be working."""
    expires = lease.get("expires")
    if not isinstance(expires, int | float):
        return "unreadable lease"
    if expires < now:
        return f"expired {now - expires:.0f}s ago"
    pid = lease.get("pid")
    if lease.get("host") == socket.gethostname() and isinstance(pid, int):
        # Same host: the holder is alive only if a process with its pid *and* start time exists (a pid
        # alone can be reused, e.g. by a rerun in a fresh PID namespace).
        started = _process_start(pid)
        if started is None or (lease.get("started") is not None and started != lease["started"]):
            return f"its process {pid} on this host is gone"
    return None


def acquire(layout: OutputLayout, holder: Holder, ttl_s: float) -> None:
    """Take OUTPUT's lease, or raise :class:`LeaseHeldError` naming the holder and its expiry."""
    path = layout.state(LEASE_FILE)
    for _ in range(3):
        if create_exclusive(layout.fs, path, _lease_bytes(holder, ttl_s)):
            log.debug("lease on %s taken by %s", redact(layout.root), holder)
            return
        lease = _read(layout)
        if lease is None:
            continue  # given back between our attempt and the read: try again
        reason = _stale(lease, time.time())
        if reason is None:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(lease["expires"])))
            raise LeaseHeldError(
                f"output: {redact(layout.root)} is being written by another run (run {lease.get('run_id')}, "
                f"process {lease.get('pid')} on {lease.get('host')}); its lease expires at {until} unless "
                f"renewed. Wait for that run, or remove {redact(layout.root)}/_raypipe/{LEASE_FILE} if you "
                "know it is dead"
            )
        log.warning("taking over a stale lease on %s (%s; was %s)", redact(layout.root), reason, lease)
        delete(layout.fs, path)
    raise LeaseHeldError(f"output: {redact(layout.root)}: could not take the lease (it keeps changing hands)")


def release(layout: OutputLayout, holder: Holder) -> None:
    """Give the lease back, if it is still ours."""
    lease = _read(layout)
    if lease is not None and lease.get("run_id") == holder.run_id:
        delete(layout.fs, layout.state(LEASE_FILE))


def _renew(layout: OutputLayout, holder: Holder, ttl_s: float, stop: threading.Event) -> None:
    while not stop.wait(ttl_s / 3):
        lease = _read(layout)
        if lease is None or lease.get("run_id") != holder.run_id:
            log.error("the lease on %s was taken by another run (%s)", redact(layout.root), lease)
            return
        with contextlib.suppress(OSError):
            publish_bytes(layout.fs, layout.state(LEASE_FILE), _lease_bytes(holder, ttl_s))


@contextlib.contextmanager
def lease(layout: OutputLayout, run_id: str, ttl_s: float) -> Iterator[Holder]:
    """Hold OUTPUT's lease for the body of the ``with``, renewing it every ``ttl_s / 3`` seconds."""
    holder = Holder(socket.gethostname(), os.getpid(), run_id, _process_start(os.getpid()))
    acquire(layout, holder, ttl_s)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(layout, holder, ttl_s, stop), name="raypipe-lease", daemon=True)
    renewer.start()
    try:
        yield holder
    finally:
        stop.set()
        renewer.join(timeout=5)
        release(layout, holder)


def held_by(layout: OutputLayout) -> dict[str, Any] | None:
    """The current lease of OUTPUT (for ``status``), or None."""
    if not exists(layout.fs, layout.state(LEASE_FILE)):
        return None
    return _read(layout)
