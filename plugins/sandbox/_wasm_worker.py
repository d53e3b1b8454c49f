"""Child process that runs one CPython-on-WASI program under wasmtime, or compiles the module.

Started by :mod:`.wasm` as ``python -I _wasm_worker.py`` with a JSON job on stdin; it imports
nothing from Espalier. The guest's stdout and stderr are this process's stdout and stderr
(pipes the parent reads with a cap); the worker's own report goes to the fd named in the job.
One process per run: whatever the guest does to wasmtime's state dies with it.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time


def _engine():
    import wasmtime

    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    cfg.epoch_interruption = True
    return wasmtime.Engine(cfg)


def compile_module(job: dict) -> dict:
    import wasmtime

    started = time.monotonic()
    module = wasmtime.Module.from_file(_engine(), job["wasm_path"])
    tmp = f"{job['cache_path']}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(module.serialize())
    os.chmod(tmp, 0o600)
    os.replace(tmp, job["cache_path"])
    return {"compiled": True, "seconds": round(time.monotonic() - started, 3)}


def _scratch_usage(root: str, max_entries: int) -> tuple[int, int]:
    total = entries = 0
    stack = [root]
    while stack and entries <= max_entries:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total, entries


def run_program(job: dict) -> dict:
    import wasmtime

    # Backstops below wasmtime's own limits: a runaway worker cannot write huge files or dump core.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_size_limit"], job["file_size_limit"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = int(job["timeout_s"]) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

    engine = _engine()
    module = wasmtime.Module.deserialize_file(engine, job["cache_path"])
    linker = wasmtime.Linker(engine)
    linker.define_wasi()

    wasi = wasmtime.WasiConfig()
    wasi.argv = job["argv"]
    wasi.env = []
    wasi.preopen_dir(job["scratch_dir"], "/scratch")
    wasi.preopen_dir(job["code_dir"], "/sandbox", wasmtime.DirPerms.READ_ONLY, wasmtime.FilePerms.READ_ONLY)
    wasi.stdout_file = "/proc/self/fd/1"
    wasi.stderr_file = "/proc/self/fd/2"

    store = wasmtime.Store(engine)
    store.set_wasi(wasi)
    store.set_fuel(job["fuel"])
    store.set_limits(memory_size=job["memory_bytes"], table_elements=100_000, instances=1, tables=4, memories=1)
    store.set_epoch_deadline(1)

    stopped_by: list[str] = []
    done = threading.Event()

    def watchdog() -> None:
        deadline = time.monotonic() + job["timeout_s"]
        while not done.wait(0.02):
            if time.monotonic() >= deadline:
                stopped_by.append("timeout")
            else:
                size, entries = _scratch_usage(job["scratch_dir"], job["max_files"])
                if size > job["scratch_bytes"] or entries > job["max_files"]:
                    stopped_by.append("scratch_quota")
            if stopped_by:
                engine.increment_epoch()
                return

    report: dict = {"exit_code": None, "trap": None, "message": None}
    thread = threading.Thread(target=watchdog, daemon=True)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    thread.start()
    try:
        start(store)
        report["exit_code"] = 0
    except wasmtime.ExitTrap as exc:
        report["exit_code"] = exc.code
    except wasmtime.Trap as exc:
        report["trap"] = _classify(exc)
        report["message"] = str(exc).splitlines()[0][:500]
    except wasmtime.WasmtimeError as exc:
        report["trap"] = "error"
        report["message"] = str(exc).splitlines()[0][:500]
    finally:
        done.set()
    try:
        report["fuel_used"] = job["fuel"] - store.get_fuel()
    except Exception:  # noqa: BLE001 - accounting only
        report["fuel_used"] = None
    report["stopped_by"] = stopped_by[0] if stopped_by else None
    return report


def _classify(trap) -> str:
    # wasmtime-py 38's TrapCode enum lacks some codes (reading ``trap_code`` can raise), so
    # classify by message.
    text = str(trap).lower()
    if "fuel" in text:
        return "fuel"
    if "interrupt" in text:
        return "interrupt"
    if "stack" in text:
        return "stack_overflow"
    if "memory" in text or "unreachable" in text:
        return "memory" if "memory" in text else "unreachable"
    return "trap"


def main() -> None:
    job = json.loads(sys.stdin.read())
    report_fd = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        report = compile_module(job) if job.get("mode") == "compile" else run_program(job)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        report = {"worker_error": f"{type(exc).__name__}: {exc}"[:2000]}
    data = json.dumps(report).encode()
    if report_fd is not None:
        os.write(int(report_fd), data)
    else:
        sys.stdout.write(data.decode())


if __name__ == "__main__":
    main()
