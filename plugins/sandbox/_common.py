"""Pieces both backends share: the per-run limits, the run directory and reading the result."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from espalier.plugins.sandbox.result import SandboxResult

RUNNER = Path(__file__).with_name("_guest_runner.py")
RESULT_NAME = ".espalier-result.json"


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 256
    fuel: int = 10_000_000_000
    output_bytes: int = 64 * 1024
    result_bytes: int = 1024 * 1024
    scratch_mb: int = 16
    max_files: int = 256
    code_bytes: int = 256 * 1024
    answer_var: str = "answer"


class RunDir:
    """A private temporary directory per run: ``code/`` (read-only to the guest), ``scratch/``."""

    def __init__(self, base: str | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="espalier-sandbox-", dir=base))
        self.code = self.root / "code"
        self.scratch = self.root / "scratch"
        self.code.mkdir()
        self.scratch.mkdir()

    def write_program(self, code: str) -> None:
        (self.code / "program.py").write_text(code, encoding="utf-8")
        shutil.copyfile(RUNNER, self.code / "runner.py")
        for f in ("program.py", "runner.py"):
            (self.code / f).chmod(0o644)
        self.code.chmod(0o755)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def read_capped(path: Path, cap: int) -> tuple[bytes | None, bool]:
    """The first ``cap`` bytes of a file the guest may have written, without following links."""
    import os

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None, False
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, False
        data = os.read(fd, cap + 1)
    finally:
        os.close(fd)
    return data[:cap], len(data) > cap


def parse_envelope(data: bytes | None, truncated: bool, answer_var: str) -> tuple[Any, str | None, bool]:
    """``(value, error, produced)`` from the runner's result; never trusts its shape."""
    if data is None or not data:
        return None, None, False
    if truncated:
        return None, f"the value of {answer_var!r} is larger than the result size limit", True
    try:
        envelope = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "the program produced a result that is not valid JSON", True
    if not isinstance(envelope, dict):
        return None, "the program produced a malformed result", True
    if "error" in envelope:
        error = envelope["error"]
        return None, error if isinstance(error, str) else repr(error)[:4000], True
    return envelope.get("value"), None, True


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def build_result(
    outcome: Any,
    backend: str,
    *,
    error: str | None,
    value: Any,
    produced: bool,
    stderr: str,
    limits: Limits,
    timed_out: bool,
    exit_code: int | None,
    details: dict[str, Any] | None = None,
) -> SandboxResult:
    """The :class:`SandboxResult` both backends return, once they have named the error (if any):
    a program that produced nothing gets the generic reason, with the memory limit when it ran out."""
    if error is None and not produced:
        error = f"the program exited with status {exit_code} before producing a result"
        if "MemoryError" in stderr:
            error += f" (memory limit {limits.memory_mb} MB)"
    ok = error is None
    return SandboxResult(
        ok=ok,
        value=value if ok else None,
        stdout=decode(outcome.stdout),
        stderr=stderr,
        error=error,
        duration_s=round(outcome.duration_s, 4),
        backend=backend,
        timed_out=timed_out,
        truncated=outcome.stdout_truncated or outcome.stderr_truncated,
        exit_code=exit_code,
        details=details or {},
    )
