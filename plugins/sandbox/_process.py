"""Start a child in its own process group, read its pipes with a cap, kill the group on timeout.

Both backends go through :func:`run_capped`. The group is killed with SIGKILL after every run,
not just on timeout, so nothing the child left behind in its group survives the call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_CHUNK = 65536


@dataclass
class Outcome:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_s: float
    result: bytes | None = None
    result_truncated: bool = False


class _CappedReader(threading.Thread):
    """Drains a pipe to EOF, keeping the first ``cap`` bytes and discarding the rest."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True)
        self.fd, self.cap = fd, cap
        self.chunks: list[bytes] = []
        self.kept = 0
        self.truncated = False

    def run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, _CHUNK)
                if not chunk:
                    return
                room = self.cap - self.kept
                if room > 0:
                    self.chunks.append(chunk[:room])
                    self.kept += min(room, len(chunk))
                if len(chunk) > room:
                    self.truncated = True
        except OSError:
            return

    def data(self) -> bytes:
        return b"".join(self.chunks)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


RESULT_FD = "{result_fd}"


def run_capped(
    argv: Sequence[str],
    *,
    stdin_data: bytes = b"",
    timeout_s: float,
    output_cap: int,
    env: Mapping[str, str] | None = None,
    result_cap: int | None = None,
    pass_fds: Sequence[int] = (),
) -> Outcome:
    """Run ``argv`` in a new session and process group, reading stdout and stderr with a cap.

    With ``result_cap``, a third pipe is opened; its write end is inherited by the child and
    every ``{result_fd}`` in ``argv`` is replaced by its fd number. No ``preexec_fn`` is used,
    since the server is multi-threaded.
    """
    result_r = result_w = None
    if result_cap is not None:
        result_r, result_w = os.pipe()
        argv = [a.replace(RESULT_FD, str(result_w)) for a in argv]
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env or {}),
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(pass_fds) + ((result_w,) if result_w is not None else ()),
        )
    finally:
        if result_w is not None:
            os.close(result_w)
    pgid = proc.pid
    readers = [_CappedReader(proc.stdout.fileno(), output_cap), _CappedReader(proc.stderr.fileno(), output_cap)]
    if result_r is not None:
        readers.append(_CappedReader(result_r, result_cap or 0))
    for reader in readers:
        reader.start()
    try:
        if stdin_data:
            proc.stdin.write(stdin_data)
        proc.stdin.close()
    except OSError:
        pass
    timed_out = False
    try:
        proc.wait(timeout=max(timeout_s, 0.01))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(pgid)
        proc.wait()
    duration = time.monotonic() - started
    # Something that escaped the group could hold a pipe open: never wait on it for long, and
    # leave a pipe still being read open rather than let its fd number be reused under a reader.
    for reader in readers:
        reader.join(timeout=1.0)
    if not readers[0].is_alive():
        proc.stdout.close()
    if not readers[1].is_alive():
        proc.stderr.close()
    if result_r is not None and not readers[2].is_alive():
        os.close(result_r)
    out, err = readers[0], readers[1]
    return Outcome(
        returncode=proc.returncode,
        stdout=out.data(),
        stderr=err.data(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        timed_out=timed_out,
        duration_s=duration,
        result=readers[2].data() if result_r is not None else None,
        result_truncated=readers[2].truncated if result_r is not None else False,
    )
