"""The second backend, for code that needs numpy: the host's CPython under bubblewrap.

Layers, outermost first:

* **Namespaces** (bubblewrap): new mount, pid, network (only a down loopback), ipc, uts and
  cgroup namespaces; the filesystem is ``/usr`` and the interpreter's prefix read-only, the
  allow-listed packages read-only under ``/sandbox/site``, the program read-only, a fresh
  ``/proc`` and ``/dev``, and a size-limited tmpfs at ``/scratch`` (the working directory). No
  ``/etc``, no ``/home``, nothing of the server. ``--clearenv``, ``--new-session`` (no terminal
  injection), ``--die-with-parent``.
* **An unprivileged uid**. Run as root, bubblewrap's user namespace would map the sandbox uid to
  host root (``65534 0 1`` in ``uid_map``), where ``RLIMIT_NPROC`` does not bind and root-owned
  files stay readable. So as root no user namespace is created; every capability but SETUID and
  SETGID is dropped, and ``setpriv`` switches to ``uid``/``gid`` (65534, "nobody") with no
  groups, no inheritable capabilities and an empty bounding set before the interpreter starts.
  Run unprivileged, bubblewrap uses ``--unshare-all`` (user namespace included) and the
  sandbox runs as the server's own uid with no capabilities: give the server a dedicated user.
* **Seccomp** (see :mod:`.seccomp`), passed as ``--seccomp FD``; the runner adds a second filter
  that forbids ``execve`` before the program starts.
* **rlimits**, set by the runner before the program: CPU seconds, address space, processes,
  file size, open files, no core dumps.
* **The parent**: bubblewrap runs under a small reaper (:mod:`._reaper`) that kills it at
  ``timeout_s`` plus a grace period (bubblewrap's pid 1 then takes the whole pid namespace with
  it) and reaps the orphans bubblewrap leaves; the server kills the reaper's process group with
  SIGKILL shortly after as a backstop. stdout and stderr are read with a cap, the result from a
  dedicated pipe with a cap, parsed as JSON.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from espalier.plugins.sandbox import seccomp
from espalier.plugins.sandbox._common import Limits, RunDir, build_result, decode, parse_envelope
from espalier.plugins.sandbox._process import RESULT_FD, Outcome, run_capped
from espalier.plugins.sandbox.result import SandboxResult, SandboxUnavailable

SITE = "/sandbox/site"
REAPER = Path(__file__).with_name("_reaper.py")


def _package_dirs(packages: Sequence[str], python: str) -> list[tuple[str, str]]:
    """``(host_dir, sandbox_dir)`` for each package and its vendored ``<name>.libs`` folder."""
    script = (
        "import importlib.util, json, sys, os\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    out[name] = os.path.dirname(spec.origin) if spec and spec.origin else None\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([python, "-I", "-c", script, *packages], capture_output=True, text=True, timeout=60, env={})
    if proc.returncode != 0:
        raise SandboxUnavailable(f"Could not inspect {python}: {proc.stderr[-1000:]}")
    found = json.loads(proc.stdout)
    binds = []
    for name in packages:
        pkg_dir = found.get(name)
        if not pkg_dir:
            raise SandboxUnavailable(f"The bwrap sandbox was asked to provide {name!r}, which {python} cannot import.")
        pkg_dir = os.path.realpath(pkg_dir)
        binds.append((pkg_dir, f"{SITE}/{os.path.basename(pkg_dir)}"))
        libs = os.path.join(os.path.dirname(pkg_dir), f"{name}.libs")
        if os.path.isdir(libs):
            binds.append((os.path.realpath(libs), f"{SITE}/{name}.libs"))
    return binds


class BwrapBackend:
    """Runs programs with the host interpreter under bubblewrap; create once, reuse."""

    name = "bwrap"

    def __init__(
        self,
        *,
        work_dir: str | None = None,
        bwrap: str = "bwrap",
        python: str | None = None,
        packages: Sequence[str] = ("numpy",),
        uid: int = 65534,
        gid: int = 65534,
        max_processes: int = 64,
        max_open_files: int = 64,
        grace_s: float = 0.5,
    ):
        self.work_dir = work_dir
        self.grace_s = grace_s
        self.bwrap = shutil.which(bwrap)
        if self.bwrap is None:
            raise SandboxUnavailable("The bwrap sandbox needs bubblewrap: `apt-get install bubblewrap`.")
        self.setpriv = shutil.which("setpriv")
        self.python = os.path.realpath(python or sys.executable)
        self.as_root = os.geteuid() == 0
        if self.as_root and self.setpriv is None:
            raise SandboxUnavailable("Running as root, the bwrap sandbox needs setpriv (util-linux) to drop to a uid.")
        self.uid, self.gid = uid, gid
        self.max_processes, self.max_open_files = max_processes, max_open_files
        self.prefix = self._prefix()
        self.package_binds = _package_dirs(packages, self.python)
        self._filters = Path(tempfile.mkdtemp(prefix="espalier-seccomp-"))
        (self._filters / "sandbox.bpf").write_bytes(seccomp.sandbox_filter())
        (self._filters / "exec.bpf").write_bytes(seccomp.exec_filter())
        (self._filters / "exec.bpf").chmod(0o644)
        self._filters.chmod(0o755)
        probe = self.run("answer = 1", Limits(timeout_s=10))
        if not probe.ok:
            raise SandboxUnavailable(
                f"bubblewrap cannot start a sandbox here: {probe.error}; stderr: {probe.stderr[-1500:]}"
            )

    def _prefix(self) -> str:
        proc = subprocess.run(
            [self.python, "-I", "-S", "-c", "import sys; print(sys.base_prefix)"],
            capture_output=True,
            text=True,
            timeout=30,
            env={},
        )
        if proc.returncode != 0:
            raise SandboxUnavailable(f"{self.python} does not run: {proc.stderr[-500:]}")
        return os.path.realpath(proc.stdout.strip())

    def _argv(self, run_dir: RunDir, limits: Limits, seccomp_fd: int) -> list[str]:
        if self.as_root:
            namespaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
            caps = [
                "--cap-drop",
                "ALL",
                "--cap-add",
                "CAP_SETUID",
                "--cap-add",
                "CAP_SETGID",
                "--cap-add",
                "CAP_SETPCAP",
            ]
            drop = [
                self.setpriv,
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
        else:
            namespaces, caps, drop = ["--unshare-all"], ["--cap-drop", "ALL"], []
        argv = [self.bwrap, *namespaces, "--die-with-parent", "--new-session", "--clearenv"]
        for key, value in (
            ("LANG", "C.UTF-8"),
            ("HOME", "/scratch"),
            ("OPENBLAS_NUM_THREADS", "1"),
            ("OMP_NUM_THREADS", "1"),
            ("MKL_NUM_THREADS", "1"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ):
            argv += ["--setenv", key, value]
        argv += ["--ro-bind", "/usr", "/usr"]
        for link in ("lib", "lib64", "bin", "sbin"):
            if os.path.islink(f"/{link}"):
                argv += ["--symlink", f"usr/{link}", f"/{link}"]
        # bubblewrap creates missing parents of a mount point with mode 0700; the unprivileged
        # uid must be able to walk them, so create each one explicitly first.
        made: set[str] = set()

        def parents(target: str) -> list[str]:
            out = []
            for parent in reversed(Path(target).parents):
                p = str(parent)
                if p not in ("/", "/usr") and not p.startswith("/usr/") and p not in made:
                    made.add(p)
                    out += ["--perms", "0755", "--dir", p]
            return out

        if not self.prefix.startswith("/usr/"):
            argv += [*parents(self.prefix), "--ro-bind", self.prefix, self.prefix]
        argv += parents(f"{SITE}/x")
        for host, inside in self.package_binds:
            argv += ["--ro-bind", host, inside]
        argv += [
            "--ro-bind",
            str(run_dir.code),
            "/sandbox/code",
            "--ro-bind",
            str(self._filters / "exec.bpf"),
            "/sandbox/exec.bpf",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--perms",
            "1777",
            "--size",
            str(limits.scratch_mb * 1024 * 1024),
            "--tmpfs",
            "/scratch",
            "--chdir",
            "/scratch",
            "--seccomp",
            str(seccomp_fd),
            *caps,
            "--",
        ]
        mb = 1024 * 1024
        setup = {
            "rlimits": {
                "RLIMIT_CPU": math.ceil(limits.timeout_s) + 1,
                "RLIMIT_AS": limits.memory_mb * mb,
                "RLIMIT_NPROC": self.max_processes,
                "RLIMIT_FSIZE": limits.scratch_mb * mb,
                "RLIMIT_NOFILE": self.max_open_files,
                "RLIMIT_CORE": 0,
            },
            "sys_path": [SITE],
            "seccomp_bpf": "/sandbox/exec.bpf",
        }
        argv += [
            *drop,
            self.python,
            "-I",
            "-S",
            "/sandbox/code/runner.py",
            "/sandbox/code/program.py",
            f"fd:{RESULT_FD}",
            limits.answer_var,
            json.dumps(setup),
        ]
        return argv

    def run(self, code: str, limits: Limits) -> SandboxResult:
        with RunDir(self.work_dir) as run_dir:
            run_dir.write_program(code)
            run_dir.root.chmod(0o755)  # bwrap binds as root, but the runner reads as `uid`
            seccomp_fd = os.open(self._filters / "sandbox.bpf", os.O_RDONLY)
            try:
                argv = [
                    sys.executable,
                    "-I",
                    "-S",
                    str(REAPER),
                    str(limits.timeout_s + self.grace_s),
                    *self._argv(run_dir, limits, seccomp_fd),
                ]
                outcome = run_capped(
                    argv,
                    timeout_s=limits.timeout_s + self.grace_s + 0.4,
                    output_cap=limits.output_bytes,
                    result_cap=limits.result_bytes,
                    pass_fds=(seccomp_fd,),
                )
            finally:
                os.close(seccomp_fd)
        return self._interpret(outcome, limits)

    def _interpret(self, outcome: Outcome, limits: Limits) -> SandboxResult:
        value, error, produced = parse_envelope(outcome.result, outcome.result_truncated, limits.answer_var)
        stderr = decode(outcome.stderr)
        rc = outcome.returncode
        timed_out = outcome.timed_out or rc == 124
        if timed_out:
            error = f"timed out after {limits.timeout_s:g} s"
        elif rc is not None and rc < 0:
            error = f"the program was killed by signal {-rc}"
            if -rc == 24:  # SIGXCPU
                error = f"CPU time limit exceeded ({math.ceil(limits.timeout_s) + 1} s)"
        return build_result(
            outcome,
            self.name,
            error=error,
            value=value,
            produced=produced,
            stderr=stderr,
            limits=limits,
            timed_out=timed_out,
            exit_code=rc,
        )
