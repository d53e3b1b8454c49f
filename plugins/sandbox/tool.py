"""The ``python`` tool: lets a model run a short program in the sandbox."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from espalier.core.infrastructure.contracts import ToolResult
from espalier.plugins.sandbox.result import SandboxUnavailable
from espalier.plugins.sandbox.sandbox import Sandbox

DESCRIPTION = (
    "Run a short Python 3.12 program in an isolated sandbox and get back what it printed and the "
    "value of the variable `answer` (which must be JSON-serialisable). Standard library only; no "
    "network, no files outside the current directory, a few seconds of CPU."
)


class PythonTool:
    """Follows :class:`espalier.core.infrastructure.contracts.Tool`. ``sandbox`` is created lazily if not given."""

    name = "python"
    description = DESCRIPTION
    sensitive = True  # runs code: off for the rest of a run once it has read untrusted text
    # The sandbox reads no file and no network: its output follows from the code alone, so reading
    # it brings no outside text into the run (a run already tainted stays so).
    trusted_output = True
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "The Python program. Put the result in `answer`."},
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(self, sandbox: Sandbox | None = None, *, backend: str = "wasm", timeout_s: float = 5.0):
        self._sandbox = sandbox
        self.backend = backend
        self.timeout_s = timeout_s

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox()
        return self._sandbox

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        code = arguments.get("code") if isinstance(arguments, Mapping) else None
        if not isinstance(code, str) or not code.strip():
            return ToolResult(output="Missing argument: `code` must be a non-empty string.", is_error=True)
        try:
            result = self.sandbox.run(code, backend=self.backend, timeout_s=self.timeout_s)
        except SandboxUnavailable as exc:
            return ToolResult(output=f"The sandbox is unavailable: {exc.message}", is_error=True)
        parts = []
        if result.stdout:
            parts.append(f"stdout:\n{result.stdout}")
        if result.ok:
            parts.append(f"answer: {json.dumps(result.value)}")
        else:
            if result.stderr:
                parts.append(f"stderr:\n{result.stderr[-2000:]}")
            parts.append(f"error: {result.error}")
        if result.truncated:
            parts.append("(output was truncated)")
        return ToolResult(output="\n".join(parts), data=result.to_dict(), is_error=not result.ok)
