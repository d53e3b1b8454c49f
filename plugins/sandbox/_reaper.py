"""Parent of bubblewrap that reaps what bubblewrap orphans, and enforces the wall-clock limit.

``python -I -S _reaper.py TIMEOUT_S ARGV...``. Bubblewrap's outer process exits as soon as the
sandbox reports its status, before reaping its own child (the namespace's pid 1), which is then
reparented to the host's init. Where init does not reap (containers whose pid 1 is an
application, like the server itself), each run would leave a zombie. As a child subreaper, this
process inherits those orphans and reaps them. On timeout it kills bubblewrap, whose pid 1 then
takes the whole pid namespace down (``--die-with-parent``). Standard library only.
"""

import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def _children():
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(item) for item in handle.read().split()]
    except OSError:
        return []


def main():
    timeout_s = float(sys.argv[1])
    argv = sys.argv[2:]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    deadline = time.monotonic() + timeout_s
    status = None
    delay = 0.001
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
        elif time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = -1
        else:
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
    # Reap the orphans bubblewrap leaves (its pid 1 exits right after reporting) until none is
    # left. A namespace holding a large tmpfs can take a while to die on a loaded machine: after a
    # second, stragglers are killed; after five, give up (the caller kills the group anyway).
    started = time.monotonic()
    killed = False
    while time.monotonic() - started < 5.0:
        try:
            done, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            continue
        if not killed and time.monotonic() - started > 1.0:
            for child in _children():
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
        time.sleep(0.002)
    if status == -1:
        os._exit(124)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main()
