"""What a sandbox run returns, and the errors a caller can act on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from espalier.core.infrastructure.errors import EspalierError


class SandboxUnavailable(EspalierError):
    """The requested backend cannot run here (missing package, missing binary, no namespaces)."""

    status = 503
    code = "sandbox_unavailable"


@dataclass
class SandboxResult:
    """The outcome of one run.

    ``value`` is the JSON value of the program's answer variable (``None`` when unset). ``ok``
    is True only when the program finished without an exception inside every limit. ``error``
    says what went wrong in words a model or an operator can act on. ``truncated`` is True when
    stdout or stderr were cut at the cap. Everything except ``value``, ``stdout`` and ``stderr``
    is decided by the host, never by the sandboxed program.
    """

    ok: bool
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    duration_s: float = 0.0
    backend: str = ""
    timed_out: bool = False
    truncated: bool = False
    exit_code: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
