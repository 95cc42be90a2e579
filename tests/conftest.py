"""Shared test setup.

Tests marked ``isolated`` start Ray or a network server. They must run inside a loopback-only
network namespace (``scripts/test`` creates one with ``unshare -n``), because Ray binds to the
machine's primary address even when told 127.0.0.1. Outside such a namespace they are skipped,
or fail when ``RAYPIPE_REQUIRE_ISOLATION=1`` (set by ``scripts/test`` so CI can never skip them).
"""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

# raypipe remembers weight-file hashes under the model cache (raypipe.anonymize.models.file_sha256):
# a test run keeps its cache in a folder of its own, never under the user's home.
os.environ.setdefault("RAYPIPE_CACHE", tempfile.mkdtemp(prefix="raypipe-test-cache-"))


def network_is_loopback_only() -> bool:
    """True inside a namespace whose only interface is loopback (``if_nameindex`` asks the kernel
    about this process's own namespace; ``/sys/class/net`` may still show the host's)."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    isolated_ok = network_is_loopback_only()
    require = os.environ.get("RAYPIPE_REQUIRE_ISOLATION") == "1"
    for item in items:
        if "isolated" in item.keywords and not isolated_ok:
            if require:
                pytest.exit("RAYPIPE_REQUIRE_ISOLATION=1 but this network has interfaces besides lo", returncode=3)
            item.add_marker(pytest.mark.skip(reason="needs a loopback-only network namespace: run scripts/test"))
        if "gpu" in item.keywords:
            try:
                import torch

                has_gpu = torch.cuda.is_available()
            except ImportError:
                has_gpu = False
            if not has_gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _quiet_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests are offline: make any accidental hub download fail fast instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")


# The session's exit status, kept for pytest_unconfigure (below).
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's own status once every report is printed, without the
    interpreter's finalization: native threads of Ray, gRPC and torch left in this process by the
    in-process Ray tests can crash it there (a clean-clone CI run ended with SIGSEGV, exit 139, after
    printing "914 passed"), and that crash says nothing about raypipe."""
    if _EXIT_STATUS and os.environ.get("RAYPIPE_KEEP_FINALIZATION") != "1":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
