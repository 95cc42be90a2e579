"""One writer per OUTPUT: the lease refuses a second driver, and a dead holder's lease is taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raypipe.io.publish import create_exclusive
from raypipe.layout import OutputLayout
from raypipe.pipeline.lease import LEASE_FILE, Holder, LeaseHeldError, LeaseLostError, acquire, lease


def test_exclusive_creation_succeeds_once(tmp_path: Path) -> None:
    from fsspec.implementations.local import LocalFileSystem

    fs, path = LocalFileSystem(), str(tmp_path / "a" / "lease.json")
    assert create_exclusive(fs, path, b"first")
    assert not create_exclusive(fs, path, b"second")
    assert Path(path).read_bytes() == b"first"
    assert [p.name for p in Path(path).parent.iterdir()] == ["lease.json"]  # no temporary file left


def test_a_second_driver_is_refused_while_the_first_holds_the_lease(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    with lease(layout, "run-1", ttl_s=60):
        held = json.loads(Path(layout.state(LEASE_FILE)).read_text())
        assert held["run_id"] == "run-1" and held["host"] == socket.gethostname()
        with (
            pytest.raises(LeaseHeldError, match=r"being written by another run \(run run-1"),
            lease(layout, "run-2", 60),
        ):
            pass
    assert not Path(layout.state(LEASE_FILE)).exists()  # given back
    with lease(layout, "run-3", ttl_s=60):
        pass


def test_the_lease_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = Holder.this_process("next-run")
    dead = Holder(socket.gethostname(), int(child.stdout), "dead-run", started=1, pid_namespace=here.pid_namespace)
    acquire(layout, dead, ttl_s=3600)
    acquire(layout, here, ttl_s=60)
    assert json.loads(Path(layout.state(LEASE_FILE)).read_text())["run_id"] == "next-run"


def test_a_live_process_of_another_pid_namespace_keeps_its_lease(tmp_path: Path) -> None:
    # Same host name, another PID namespace (a container with the host's network): its pid means nothing
    # here, so only the expiry can free the lease.
    layout = OutputLayout(str(tmp_path / "out"))
    acquire(layout, Holder(socket.gethostname(), 999_999, "elsewhere", started=1, pid_namespace="pid:[1]"), 3600)
    with pytest.raises(LeaseHeldError, match="elsewhere"):
        acquire(layout, Holder.this_process("here"), ttl_s=60)


def test_a_lost_lease_stops_the_holder_from_publishing(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    with lease(layout, "run-1", ttl_s=60) as held:
        held.check()
        lease_path = Path(layout.state(LEASE_FILE))
        lease_path.write_text(json.dumps(json.loads(lease_path.read_text()) | {"run_id": "intruder"}))
        with pytest.raises(LeaseLostError, match="another run took this run's lease"):
            held.check()
    assert json.loads(lease_path.read_text())["run_id"] == "intruder"  # not released: it is not ours


def test_an_expired_lease_of_another_host_is_taken_over(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    acquire(layout, Holder("other-host", 4242, "old-run"), ttl_s=3)
    with pytest.raises(LeaseHeldError, match="on other-host"):
        acquire(layout, Holder("this-host", 1, "new-run"), ttl_s=60)
    lease_path = Path(layout.state(LEASE_FILE))
    held = json.loads(lease_path.read_text())
    lease_path.write_text(json.dumps(held | {"expires": time.time() - 1}))
    acquire(layout, Holder("this-host", 1, "new-run"), ttl_s=60)
    assert json.loads(lease_path.read_text())["run_id"] == "new-run"


def test_the_holder_renews_its_lease(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    with lease(layout, "run-1", ttl_s=3):
        first = json.loads(Path(layout.state(LEASE_FILE)).read_text())["expires"]
        time.sleep(1.5)
        assert json.loads(Path(layout.state(LEASE_FILE)).read_text())["expires"] > first
