"""Fixtures for the sandbox tests: one compiled module per session, helpers to find leftovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from espalier.plugins.sandbox import Sandbox

MARKERS = (b"_wasm_worker.py", b"bwrap", b"/sandbox/code/runner.py")


def sandbox_processes() -> set[int]:
    """Pids of anything a sandbox run could leave: workers, bwrap, runners, uid 65534."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/status") as f:
                uid_line = next(line for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if any(m in cmdline for m in MARKERS) or uid_line.split()[1] == "65534":
            found.add(int(entry))
    return found


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sandbox-cache")


@pytest.fixture(scope="session")
def sandbox(cache_dir) -> Sandbox:
    box = Sandbox(cache_dir)
    box.warm_up("wasm")
    return box


@pytest.fixture(scope="session")
def bwrap_reason(sandbox) -> str | None:
    return sandbox.available("bwrap")


@pytest.fixture(params=["wasm", "bwrap"])
def backend(request, sandbox, bwrap_reason) -> str:
    if request.param == "bwrap" and bwrap_reason:
        pytest.fail(f"bwrap backend unavailable here ({bwrap_reason}); `make test` installs bubblewrap")
    return request.param
