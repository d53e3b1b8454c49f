"""The facade callers use: ``Sandbox().run(code)`` picks a backend and applies limits."""

from __future__ import annotations

import ast
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from espalier.plugins.sandbox._common import Limits
from espalier.plugins.sandbox.result import SandboxResult, SandboxUnavailable

BACKENDS = ("wasm", "bwrap")


def default_cache_dir() -> Path:
    home = os.environ.get("ESPALIER_HOME")
    base = Path(home) if home else Path.home() / ".espalier"
    return base / "cache" / "sandbox"


class Sandbox:
    """Runs untrusted Python out of process and returns a :class:`SandboxResult`.

    :param cache_dir: where the compiled ``python.wasm`` is kept (default
        ``$ESPALIER_HOME/cache/sandbox``, else ``~/.espalier/cache/sandbox``).
    :param limits: default :class:`Limits`; every ``run`` may override single values.
    :param work_dir: parent of the per-run temporary directories (default: the system temp dir).
    :param bwrap_options: keyword arguments for :class:`~.bwrap.BwrapBackend` (``packages``,
        ``python``, ``uid``...).

    Backends are created lazily and once: the first wasm run compiles the module into the
    cache (seconds) unless :meth:`warm_up` ran first; later runs and later ``Sandbox``
    objects reuse it.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        limits: Limits | None = None,
        work_dir: str | None = None,
        bwrap_options: dict[str, Any] | None = None,
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.limits = limits or Limits()
        self.work_dir = work_dir
        self.bwrap_options = dict(bwrap_options or {})
        self._backends: dict[str, Any] = {}
        self._lock = threading.Lock()

    def backend(self, name: str):
        if name not in BACKENDS:
            raise SandboxUnavailable(f"Unknown sandbox backend {name!r}; choose one of {', '.join(BACKENDS)}.")
        with self._lock:
            if name not in self._backends:
                if name == "wasm":
                    from espalier.plugins.sandbox.wasm import WasmBackend

                    self._backends[name] = WasmBackend(self.cache_dir, work_dir=self.work_dir)
                else:
                    from espalier.plugins.sandbox.bwrap import BwrapBackend

                    self._backends[name] = BwrapBackend(work_dir=self.work_dir, **self.bwrap_options)
            return self._backends[name]

    def warm_up(self, backend: str = "wasm") -> None:
        """Prepare a backend now (compile the wasm module, build seccomp filters)."""
        self.backend(backend)

    def available(self, backend: str) -> str | None:
        """None when ``backend`` can run here, else the reason it cannot."""
        try:
            self.backend(backend)
        except SandboxUnavailable as exc:
            return exc.message
        return None

    def run(
        self,
        code: str,
        *,
        backend: str = "wasm",
        timeout_s: float | None = None,
        memory_mb: int | None = None,
        fuel: int | None = None,
        answer_var: str | None = None,
        output_bytes: int | None = None,
    ) -> SandboxResult:
        """Run ``code`` and return what it left in ``answer_var`` (default ``answer``).

        Raises :class:`SandboxUnavailable` when the backend cannot run here; everything the
        program does wrong is reported in the result, never raised.
        """
        overrides = {
            k: v
            for k, v in dict(
                timeout_s=timeout_s, memory_mb=memory_mb, fuel=fuel, answer_var=answer_var, output_bytes=output_bytes
            ).items()
            if v is not None
        }
        limits = replace(self.limits, **overrides)
        if not limits.answer_var.isidentifier():
            raise SandboxUnavailable(f"answer_var must be a Python identifier, not {limits.answer_var!r}.")
        started = time.monotonic()
        if len(code.encode("utf-8", errors="replace")) > limits.code_bytes:
            return SandboxResult(
                ok=False, error=f"the program is longer than {limits.code_bytes} bytes", backend=backend
            )
        # Only fast feedback for the model: the boundary is the sandbox, not this parse.
        try:
            ast.parse(code, filename="<program>")
        except SyntaxError as exc:
            caret = f"\n    {exc.text.rstrip()}\n    {' ' * max((exc.offset or 1) - 1, 0)}^" if exc.text else ""
            return SandboxResult(
                ok=False,
                error=f"SyntaxError: {exc.msg} (line {exc.lineno}){caret}",
                duration_s=round(time.monotonic() - started, 4),
                backend=backend,
            )
        except (ValueError, RecursionError, MemoryError) as exc:
            return SandboxResult(ok=False, error=f"the program could not be parsed: {exc}", backend=backend)
        return self.backend(backend).run(code, limits)
