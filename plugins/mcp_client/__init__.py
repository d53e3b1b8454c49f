"""Built-in ``mcp_client``: the tools of MCP servers an operator names become Espalier tools.

An operator lists servers in the settings (``[[mcp_servers]]`` tables in the TOML file, or
``ESPALIER_MCP_SERVERS`` as JSON)::

    [[mcp_servers]]
    name = "weather"                       # tools become weather__<tool>
    url = "http://127.0.0.1:9000/mcp"      # streamable HTTP ...
    headers = { Authorization = "Bearer ..." }
    min_role = "user"                      # who may use them (default: operator)

    [[mcp_servers]]
    name = "files"
    command = "uvx"                        # ... or a command spoken to over stdio
    args = ["mcp-server-filesystem", "/srv/docs"]

At start-up each server is asked for its tools (official ``mcp`` SDK client). Each tool is an
Espalier tool named ``<server>__<tool>`` with the server's JSON Schema, so it goes through the same
paths as every other tool: the argument check against its schema, the role check
(``min_role``, or ``ESPALIER_TOOL_ROLES`` per tool), agents and chains, the audit log of direct
calls and agent traces. Its output is someone else's text: never ``trusted_output``, so agents
quote it as data and, once it is read, refuse sensitive tools for the rest of the run; the tools
are ``sensitive`` themselves (a remote server may act on the world).

Each call opens its own session (a stdio server is started for it): nothing is shared between
callers and a server that went away and came back needs no reconnection logic. Servers are asked
for their tools one after another at start-up, each within its ``timeout_seconds``. A server that
cannot be reached answers its tools' calls with an error result saying so ("unavailable"), never
a failed request; one unreachable at start-up contributes no tools (logged), and is asked again
at the next start. Secrets in ``headers`` and ``env`` are never logged.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from espalier import hookimpl
from espalier.core.infrastructure.contracts import Tool, ToolResult
from espalier.core.infrastructure.errors import InvalidInput

log = logging.getLogger("espalier.mcp_client")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
ROLES = ("user", "operator", "admin")
MAX_TOOLS_PER_SERVER = 200


@dataclass(frozen=True)
class ServerConfig:
    """One ``[[mcp_servers]]`` entry, checked."""

    name: str
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    min_role: str = "operator"
    timeout_seconds: float = 30.0

    @classmethod
    def parse(cls, raw: Any, number: int) -> ServerConfig:
        where = f"mcp_servers[{number}]"
        if not isinstance(raw, Mapping):
            raise InvalidInput(f"{where} must be a table")
        unknown = set(raw) - {"name", "url", "headers", "command", "args", "env", "min_role", "timeout_seconds"}
        if unknown:
            raise InvalidInput(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidInput(f"{where}.name must be 1-40 letters, digits, '_' or '-'")
        url, command = raw.get("url"), raw.get("command")
        if (url is None) == (command is None):
            raise InvalidInput(f"{where} ({name}) needs either url (streamable HTTP) or command (stdio)")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise InvalidInput(f"{where}.url must be an http(s) URL")
        headers = raw.get("headers") or {}
        env = raw.get("env")
        for key, value in (("headers", headers), ("env", env or {})):
            if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                raise InvalidInput(f"{where}.{key} must map names to strings")
        args = raw.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidInput(f"{where}.args must be a list of strings")
        role = raw.get("min_role", "operator")
        if role not in ROLES:
            raise InvalidInput(f"{where}.min_role must be one of {', '.join(ROLES)}")
        timeout = raw.get("timeout_seconds", 30.0)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 600:
            raise InvalidInput(f"{where}.timeout_seconds must be in (0, 600]")
        return cls(name, url, dict(headers), command, tuple(args), dict(env) if env else None, role, float(timeout))

    def __repr__(self) -> str:
        return f"ServerConfig(name={self.name!r}, target={self.target!r}, min_role={self.min_role!r})"

    @property
    def target(self) -> str:
        """Where the server is, fit for a log: the URL without user info, query or fragment (they
        may hold keys), or the command without its arguments (so may they); headers and env never."""
        if self.url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        return f"{self.command} (stdio)"


class Unreachable(RuntimeError):
    pass


class McpConnection:
    """Sessions with one MCP server, opened per request on the caller's thread."""

    def __init__(self, config: ServerConfig):
        self.config = config

    def _session(self) -> Any:
        from contextlib import asynccontextmanager

        from mcp.client.session import ClientSession

        config = self.config

        @asynccontextmanager
        async def session() -> Any:
            if config.url is not None:
                from mcp.client.streamable_http import streamable_http_client
                from mcp.shared._httpx_utils import create_mcp_http_client

                http = create_mcp_http_client(headers=dict(config.headers))
                async with http, streamable_http_client(config.url, http_client=http) as (read, write):
                    async with ClientSession(read, write) as client:
                        await client.initialize()
                        yield client
            else:
                from mcp.client.stdio import StdioServerParameters, stdio_client

                parameters = StdioServerParameters(
                    command=config.command or "", args=list(config.args), env=dict(config.env) if config.env else None
                )
                async with stdio_client(parameters) as (read, write):
                    async with ClientSession(read, write) as client:
                        await client.initialize()
                        yield client

        return session()

    def run(self, work: Callable[[Any], Any]) -> Any:
        """``await work(session)`` in a fresh session; Unreachable when the server cannot be used."""

        async def go() -> Any:
            with anyio.fail_after(self.config.timeout_seconds):
                async with self._session() as session:
                    return await work(session)

        from mcp.shared.exceptions import MCPError

        try:
            return anyio.run(go)
        except MCPError:
            raise  # the server answered, with an error of its own: the call failed, the server is there
        except Exception as error:  # connection refused, a timeout, a server that exited...
            raise Unreachable(f"{type(error).__name__}: {_short(error)}") from error

    def list_tools(self) -> list[Any]:
        async def work(session: Any) -> list[Any]:
            return list((await session.list_tools()).tools)

        return self.run(work)

    def call(self, name: str, arguments: Mapping[str, Any]) -> Any:
        async def work(session: Any) -> Any:
            return await session.call_tool(name, dict(arguments))

        return self.run(work)


def _scrub(text: str, config: ServerConfig) -> str:
    """``text`` with the configured URL, header values and env values replaced by the safe target."""
    for secret in [config.url or "", *config.headers.values(), *(config.env or {}).values(), *config.args]:
        if secret and len(secret) >= 4:
            text = text.replace(secret, config.target if secret == config.url else "***")
    return text


def _short(error: BaseException) -> str:
    # An exception group (anyio task groups) says little itself: its first leaf says what happened.
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return (str(error) or type(error).__name__)[:300]


class McpTool:
    """One tool of an MCP server, as an Espalier tool."""

    sensitive = True  # a remote server may act on the world; agents refuse it after untrusted text

    def __init__(self, connection: McpConnection, remote: Any):
        config = connection.config
        self.connection = connection
        self.remote_name = remote.name
        self.name = f"{config.name}__{remote.name}"
        self.description = (remote.description or remote.name) + f" (MCP server '{config.name}')"
        self.parameters = dict(remote.input_schema or {"type": "object", "properties": {}})
        self.min_role = config.min_role
        self._lock = threading.Lock()
        self.available = True

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        from mcp.shared.exceptions import MCPError

        server = self.connection.config.name
        try:
            result = self.connection.call(self.remote_name, arguments)
        except MCPError as error:
            return ToolResult(output=f"The MCP server '{server}' refused the call: {_short(error)}", is_error=True)
        except Unreachable as error:
            with self._lock:
                self.available = False
            # The detail (it may quote the URL) goes to the log only; the caller, and the model, learn
            # that the server is away.
            log.warning(
                "MCP server %s unavailable for %s: %s",
                server,
                self.remote_name,
                _scrub(str(error), self.connection.config),
            )
            return ToolResult(output=f"The MCP server '{server}' is unavailable; try again later.", is_error=True)
        with self._lock:
            self.available = True
        texts = [getattr(part, "text", None) for part in result.content]
        output = "\n".join(t for t in texts if t) or ("(no text)" if not result.structured_content else "")
        data = result.structured_content if isinstance(result.structured_content, dict) else None
        if data is not None and not output:
            import json

            output = json.dumps(data)
        return ToolResult(output=output, data=data, is_error=bool(result.is_error))


def discover(raw_servers: list[Any]) -> list[Tool]:
    """The tools of every configured server that answers (configuration errors raise)."""
    configs = [ServerConfig.parse(raw, number) for number, raw in enumerate(raw_servers)]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise InvalidInput("mcp_servers: two servers have the same name")
    tools: list[Tool] = []
    for config in configs:
        connection = McpConnection(config)
        try:
            remote = connection.list_tools()
        except Unreachable as error:
            log.warning(
                "MCP server %s unreachable at start-up, no tools from it: %s", config.name, _scrub(str(error), config)
            )
            continue
        if len(remote) > MAX_TOOLS_PER_SERVER:
            log.warning(
                "MCP server %s offers %d tools; the first %d are used", config.name, len(remote), MAX_TOOLS_PER_SERVER
            )
        for item in remote[:MAX_TOOLS_PER_SERVER]:
            if not _NAME.match(item.name or ""):
                log.warning("MCP server %s: tool name %r is not usable here, skipped", config.name, item.name)
                continue
            tools.append(McpTool(connection, item))
        log.info("MCP server %s: %d tools (%s)", config.name, len(remote), config)
    return tools


@hookimpl
def register_tools(register, platform):
    for tool in discover(list(platform.settings.mcp_servers)):
        register(tool)
