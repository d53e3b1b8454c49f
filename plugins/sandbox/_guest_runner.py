"""Runs INSIDE the sandbox (CPython-on-WASI or bubblewrap), never in the server.

Usage: ``python -I -S runner.py PROGRAM RESULT ANSWER_VAR [SETUP_JSON]``; RESULT is a path or
``fd:N`` for an inherited file descriptor.

It executes PROGRAM, then writes ``{"value": ...}`` or ``{"error": ...}`` as JSON to RESULT.
The host reads only RESULT (size-capped, parsed as JSON) for the value; stdout is just text.
The program shares this interpreter, so it can of course write RESULT itself; that only lets
it choose its own answer, which it could do anyway. Whether the run succeeded, timed out or ran
out of memory is decided by the host from the outside. This file must stay standard-library
only and work on CPython 3.11+ and on WASI.
"""

import sys


def _setup(spec):
    # Lowering limits is irreversible for an unprivileged process; done before any untrusted code.
    import resource

    for name, value in spec.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, name), (value, value))
    for path in spec.get("sys_path", []):
        sys.path.insert(0, path)
    bpf = spec.get("seccomp_bpf")
    if bpf:
        _load_seccomp(bpf)


def _load_seccomp(path):
    """Install a second filter (no execve) so the program cannot replace this runner."""
    import ctypes

    with open(path, "rb") as f:
        prog_bytes = f.read()

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = SockFprog(len(prog_bytes) // 8, prog_bytes)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_seccomp, seccomp_mode_filter = 22, 2
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "could not install the seccomp filter")


def _to_json(value, depth=0):
    """A small strict JSON encoder: CPython-on-WASI has no cached bytecode, and importing
    ``json`` (which imports ``re``) would cost about 45 ms on every run."""
    from _json import encode_basestring_ascii as quote

    if depth > 100:
        raise ValueError("nested too deeply")
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not allowed in JSON")
        return float.__repr__(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_to_json(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if isinstance(k, str):
                key = k
            elif k is None or isinstance(k, (bool, int, float)):
                key = _to_json(k, depth + 1)
            else:
                raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")
            items.append(quote(key) + ":" + _to_json(v, depth + 1))
        return "{" + ",".join(items) + "}"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def main():
    program_path, result_path, answer_var = sys.argv[1:4]
    if len(sys.argv) > 4 and sys.argv[4]:
        import json

        _setup(json.loads(sys.argv[4]))

    with open(program_path, encoding="utf-8") as f:
        source = f.read()
    import os

    try:
        os.chdir("/scratch")  # WASI starts in "/", where nothing is mounted
    except OSError:
        pass
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    encode, quote = _to_json, __import__("_json").encode_basestring_ascii
    text = None
    try:
        exec(compile(source, program_path, "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            text = '{"error":' + quote(f"program called exit({exc.code!r})") + "}"
    except BaseException as exc:  # noqa: BLE001 - everything the program raises is reported
        import traceback

        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        try:
            sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
        except BaseException:  # noqa: BLE001 - a broken stderr must not lose the result
            pass
        text = '{"error":' + quote(f"{type(exc).__name__}: {exc}"[:4000]) + "}"
    if text is None:
        if answer_var in namespace:
            try:
                text = '{"value":' + encode(namespace[answer_var]) + "}"
            except (TypeError, ValueError, RecursionError) as exc:
                text = '{"error":' + quote(f"{answer_var!r} is not JSON-serialisable: {exc}") + "}"
        else:
            text = '{"value":null,"missing":true}'
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - a full or closed stdout must not lose the result
        pass
    if result_path.startswith("fd:"):  # an inherited pipe (bwrap); re-opening it would need its owner
        f = open(int(result_path[3:]), "w", encoding="utf-8", closefd=True)
    else:
        f = open(result_path, "w", encoding="utf-8")
    with f:
        f.write(text)


if __name__ == "__main__":
    main()
