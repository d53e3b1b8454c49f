"""Seccomp filters for the bubblewrap backend, built with libseccomp (through ``pyseccomp``).

Two filters, both "allow by default, deny what a calculation never needs":

* the **sandbox filter**, handed to ``bwrap --seccomp FD``: no sockets, no new processes (fork,
  vfork, clone without ``CLONE_THREAD``; ``clone3`` answers ENOSYS so glibc falls back to
  ``clone`` for threads, whose flags a filter can inspect), no ptrace or cross-process memory,
  no ``kill`` (a thread may still signal itself through ``tgkill``), no namespaces, mounts,
  keyrings, bpf, io_uring, perf, module or reboot calls, and no ``TIOCSTI`` terminal injection.
  Syscalls of other architectures (i386 ``int 0x80``, x32) kill the process.
* the **exec filter**, which the runner loads just before the program runs, denying ``execve``:
  the sandbox filter has to allow it, since bwrap loads it before executing the interpreter.

A deny-list keeps numpy, OpenBLAS threads and the interpreter working without chasing every
syscall they use; the namespaces, the unprivileged uid and the rlimits are the other layers.
"""

from __future__ import annotations

import errno
import tempfile

CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412

DENIED = (
    "socket",
    "socketpair",
    "fork",
    "vfork",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kill",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "mknod",
    "mknodat",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "fanotify_init",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "personality",
)


def _module():
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 missing
        from espalier.plugins.sandbox.result import SandboxUnavailable

        raise SandboxUnavailable(
            "The bwrap sandbox needs the seccomp bindings: `pip install pyseccomp` and the "
            f"Debian package libseccomp2 ({exc})."
        ) from exc
    return pyseccomp


def _export(flt) -> bytes:
    # pyseccomp's export_bpf writes to a real file descriptor.
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


def sandbox_filter() -> bytes:
    """The BPF program for ``bwrap --seccomp``."""
    sc = _module()
    flt = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            flt.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):  # unknown on this architecture
            continue
    # A process-creating clone has CLONE_THREAD clear; threads (OpenBLAS, threading) have it set.
    flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    return _export(flt)


def exec_filter() -> bytes:
    """The BPF program the runner loads before the program: no more ``execve``."""
    sc = _module()
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in ("execve", "execveat"):
        flt.add_rule(sc.ERRNO(errno.EPERM), name)
    return _export(flt)
