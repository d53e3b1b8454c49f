"""An example Espalier plugin: one tool and one route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import get
from litestar.params import FromQuery

from espalier import CurrentPrincipal, ToolResult, access, hookimpl

__version__ = "0.1.0"


class WordCount:
    """Tools are plain objects: a name, a description for the model, a JSON Schema, and invoke()."""

    name = "word_count"
    description = "Count the words in a text."
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        words = len(str(arguments.get("text", "")).split())
        return ToolResult(output=f"{words} words", data=words)


# Every route says who may call it: access("user") admits users, operators and admins.
@get("/api/hello", opt=access("user"), tags=["hello"])
async def hello(principal: CurrentPrincipal, name: FromQuery[str] = "world") -> dict[str, str]:
    return {"message": f"Hello, {name}!", "from_key": principal.name}


@hookimpl
def register_tools(register):
    register(WordCount())


@hookimpl
def register_routes(register):
    register(hello)
