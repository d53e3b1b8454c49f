"""Built-in ``sql`` tool: read-only queries on the database an operator configures
(``ESPALIER_SQL_TOOL_URL``), never on Espalier's own database unless pointed at it on purpose.

The boundary is the database itself, not a parser: SQLite is opened with ``mode=ro`` (the engine
refuses every write), PostgreSQL runs each query in a ``READ ONLY`` transaction with a statement
timeout and is always rolled back. The keyword check below only gives quick feedback. Values go
in as bound parameters (``:name`` in the query, ``params`` in the arguments), rows come back capped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from espalier import hookimpl
from espalier.core.infrastructure.contracts import ToolResult
from espalier.plugins.common.sql import read_only_connection, read_only_engine

DEFAULT_ROWS = 50
_READ_START = re.compile(r"^\s*(select|with|values|explain)\b", re.IGNORECASE)


class SqlTool:
    name = "sql"
    sensitive = True  # reads data: agents refuse a query copied from tool output
    min_role = "operator"  # an operator's database: users reach it only if ESPALIER_TOOL_ROLES says so
    description = (
        "Run one read-only SQL query (SELECT or WITH) on the configured database and get the rows "
        "back as JSON. Pass values as :name placeholders with `params`."
    )
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 10_000, "description": "One SELECT statement."},
            "params": {
                "type": "object",
                "description": "Values for :name placeholders.",
                "additionalProperties": {"type": ["string", "number", "integer", "boolean", "null"]},
            },
            "max_rows": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "Row cap (default 50)."},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.max_rows = 200
        self.timeout_ms = 5000
        self.problem = "The sql tool has no database: an operator sets ESPALIER_SQL_TOOL_URL."

    def configure(self, url: str | None, *, max_rows: int = 200, timeout_ms: int = 5000) -> None:
        self.max_rows = max_rows
        self.timeout_ms = timeout_ms
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        if not url:
            return
        try:
            self.engine = read_only_engine(url, timeout_ms=timeout_ms)
        except ValueError as exc:
            self.problem = f"The sql tool is misconfigured: {exc}."

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        if self.engine is None:
            return ToolResult(output=self.problem, is_error=True)
        query = arguments["query"].strip().rstrip(";")
        if not _READ_START.match(query) or ";" in query:
            return ToolResult(output="Only one read-only statement (SELECT or WITH) is allowed.", is_error=True)
        limit = min(int(arguments.get("max_rows", DEFAULT_ROWS)), self.max_rows)
        try:
            return self._run(query, dict(arguments.get("params") or {}), limit)
        except SQLAlchemyError as exc:
            # the driver's own message (e.g. "attempt to write a readonly database"), without the SQL echo
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
            return ToolResult(output=f"The query failed: {reason}", is_error=True)

    def _run(self, query: str, params: dict[str, Any], limit: int) -> ToolResult:
        assert self.engine is not None
        with read_only_connection(self.engine, self.timeout_ms) as connection:
            result = connection.execute(text(query), params)
            columns = list(result.keys()) if result.returns_rows else []
            rows = result.fetchmany(limit + 1) if result.returns_rows else []
        truncated = len(rows) > limit
        records = [dict(zip(columns, (_jsonable(v) for v in row), strict=True)) for row in rows[:limit]]
        output = json.dumps(records, default=str)
        if truncated:
            output += f"\n(only the first {limit} rows)"
        return ToolResult(output=output, data={"columns": columns, "rows": records, "truncated": truncated})


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


@hookimpl(trylast=True)
def register_tools(register):
    register(SqlTool())


@hookimpl
def startup(platform):
    tool = platform.tools.get("sql") if "sql" in platform.tools else None
    if isinstance(tool, SqlTool):
        settings = platform.settings
        tool.configure(
            settings.sql_tool_url, max_rows=settings.sql_tool_max_rows, timeout_ms=settings.sql_tool_timeout_ms
        )


@hookimpl
def shutdown(platform):
    tool = platform.tools.get("sql") if "sql" in platform.tools else None
    if isinstance(tool, SqlTool):
        tool.configure(None)
