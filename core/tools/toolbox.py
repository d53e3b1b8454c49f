"""Tools as the API and the agents see them: listing, argument checking, invocation.

Arguments are checked against the tool's own JSON Schema before the tool runs, so a tool never
sees a malformed call and the caller learns which field is wrong. Tools are synchronous and may
block (the sandbox, SQL); callers run them off the event loop.

A tool that reads data on someone's behalf asks :func:`caller` whose: the key that started the
agent run, or the operator invoking the tool directly. The ``Tool`` protocol stays
``invoke(arguments)``; the caller travels in a context variable set around each call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jsonschema

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import Tool, ToolResult
from espalier.core.infrastructure.errors import Forbidden, InvalidInput
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.registry import Registry

log = logging.getLogger("espalier.tools")

MAX_OUTPUT_CHARS = 20_000
_caller: ContextVar[Principal | None] = ContextVar("espalier_tool_caller", default=None)


def caller() -> Principal | None:
    """The key the running tool call acts for; None for trusted in-process callers (the CLI, a
    benchmark). Tools that read data check it against their own access rules, e.g.::

        principal = caller()
        if principal is not None and not principal.has_role("operator"):
            return ToolResult(output="only operators may read the ledger", is_error=True)
    """
    return _caller.get()


def _field_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if not path and error.validator == "required":
        # "'x' is a required property": the missing field is the first quoted word
        return str(error.message).split("'")[1] if "'" in error.message else "arguments"
    if not path and error.validator == "additionalProperties":
        return "arguments"
    return path or "arguments"


def check_arguments(tool: Tool, arguments: Any) -> dict[str, Any]:
    """Validate ``arguments`` against ``tool.parameters``; raise InvalidInput naming the field."""
    if not isinstance(arguments, Mapping):
        raise InvalidInput(f"arguments for tool '{tool.name}' must be a JSON object", code="invalid_arguments")
    validator = jsonschema.Draft202012Validator(dict(tool.parameters))
    errors = sorted(validator.iter_errors(dict(arguments)), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = _field_path(error)
        raise InvalidInput(
            f"invalid argument '{field}' for tool '{tool.name}': {error.message}. See GET /api/tools for its schema.",
            code="invalid_arguments",
            details={"field": field, "tool": tool.name},
        )
    return dict(arguments)


@dataclass
class ToolCall:
    """One finished call: what went in, what came out, how long it took."""

    tool: str
    arguments: dict[str, Any]
    result: ToolResult
    duration_ms: float


class ToolService:
    def __init__(self, tools: Registry[Tool], audit: AuditLog, roles: Mapping[str, str] | None = None):
        self.tools = tools
        self.audit = audit
        self.roles = dict(roles or {})  # the operator's ESPALIER_TOOL_ROLES, over each tool's min_role

    def required_role(self, name: str) -> str:
        return self.roles.get(name) or getattr(self.get(name), "min_role", None) or "user"

    def authorize(self, name: str, principal: Principal | None) -> None:
        """The one access check of a tool, made by :meth:`call` on every path (direct invoke,
        agent runs, chains) and up front by entry points that take a list of tools. ``None`` is a
        trusted in-process caller (the CLI, a benchmark)."""
        if principal is None:
            return
        role = self.required_role(name)
        if not principal.has_role(role):
            raise Forbidden(
                f"tool '{name}' is for keys with role '{role}' or above (ESPALIER_TOOL_ROLES); "
                f"this key is '{principal.role}'",
                code="tool_forbidden",
                details={"tool": name, "min_role": role},
            )

    def allowed(self, principal: Principal | None) -> set[str]:
        names = {entry.item.name for entry in self.tools}
        if principal is None:
            return names
        return {name for name in names if principal.has_role(self.required_role(name))}

    def direct(self, principal: Principal | None) -> set[str]:
        """The tools ``principal`` may call directly (``POST /api/tools/{name}/invoke``, ``/mcp``),
        not through an agent: those its role allows, less the sensitive ones (code, queries, other
        servers' actions) for keys below operator unless the operator named the tool in
        ``ESPALIER_TOOL_ROLES``. An agent's run keeps its own rule for them (untrusted text
        switches them off), which a direct call has no run to apply."""
        names = self.allowed(principal)
        if principal is None or principal.has_role("operator"):
            return names
        return {name for name in names if name in self.roles or not getattr(self.get(name), "sensitive", False)}

    def authorize_direct(self, name: str, principal: Principal | None) -> None:
        self.authorize(name, principal)
        if name not in self.direct(principal):
            raise Forbidden(
                f"tool '{name}' is sensitive: called directly it is for operators, unless ESPALIER_TOOL_ROLES "
                "names it (an agent may still use it for this key)",
                code="tool_forbidden",
                details={"tool": name},
            )

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": entry.item.name,
                "description": entry.item.description,
                "parameters": dict(entry.item.parameters),
                "plugin": entry.plugin,
                "min_role": self.required_role(entry.item.name),
            }
            for entry in sorted(self.tools, key=lambda e: e.item.name)
        ]

    def get(self, name: str) -> Tool:
        return self.tools.get(name)  # NotFound lists the names

    def call(self, name: str, arguments: Any, *, by: Principal | None = None) -> ToolCall:
        """Check and run one call for ``by`` (see :func:`caller`). A tool that raises becomes an
        error result, never a crash."""
        tool = self.get(name)
        self.authorize(name, by)
        checked = check_arguments(tool, arguments)
        started = time.perf_counter()
        token = _caller.set(by)
        try:
            result = tool.invoke(checked)
        except InvalidInput:
            raise
        except Exception as exc:  # a plugin's bug: report it as the tool's failure
            log.exception("tool %s failed", name)
            result = ToolResult(output=f"The tool '{name}' failed: {type(exc).__name__}", is_error=True)
        finally:
            _caller.reset(token)
        if not isinstance(result, ToolResult):
            result = ToolResult(output=str(result))
        if len(result.output) > MAX_OUTPUT_CHARS:
            result = ToolResult(result.output[:MAX_OUTPUT_CHARS] + "\n(output truncated)", result.data, result.is_error)
        return ToolCall(name, checked, result, round((time.perf_counter() - started) * 1000, 2))

    def invoke(self, name: str, arguments: Any, *, by: Principal | None) -> ToolCall:
        """A direct call (``POST /api/tools/{name}/invoke``, the console's tool playground), under
        :meth:`authorize_direct`; recorded in the audit log."""
        self.get(name)  # 404 before 403 for a name that is no tool
        self.authorize_direct(name, by)
        call = self.call(name, arguments, by=by)
        # argument values may hold secrets (SQL literals, code): record their names only
        self.audit.record(by, "tool.invoke", name, arguments=sorted(call.arguments), is_error=call.result.is_error)
        return call
