"""Tools from plain typed functions: ``@espalier.tool``.

The JSON Schema of the arguments comes from the type hints (through pydantic, so ``Literal``,
``Annotated[int, Field(ge=1)]``, lists, optional values and defaults all work), the description
from the docstring's first paragraph, each argument's description from its ``Args:`` section
(Google style)::

    from typing import Literal
    from espalier import hookimpl, tool

    @tool(min_role="user")
    def convert(amount: float, unit: Literal["km", "mi"] = "km") -> str:
        \"\"\"Convert a distance between kilometres and miles.

        Args:
            amount: the distance to convert
            unit: the unit it is in
        \"\"\"
        return f"{amount * 0.621:.2f} mi" if unit == "km" else f"{amount / 0.621:.2f} km"

    @hookimpl
    def register_tools(register):
        register(convert)

The function's return value becomes the result: a :class:`ToolResult` as is, a string as its
output, anything else as JSON (a dict is also the result's ``data``). An exception is the tool's
failure (the tool service reports it as an error result, never a crash).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, get_type_hints

from espalier.core.infrastructure.contracts import ToolResult
from espalier.core.infrastructure.errors import InvalidInput


def _docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """(the description, argument name -> description) from a Google-style docstring."""
    text = inspect.getdoc(fn) or ""
    head, _, rest = text.partition("\n\n")
    arguments: dict[str, str] = {}
    match = re.search(r"^(?:Args|Arguments|Parameters):\s*$(.*?)(?=^\S|\Z)", text, flags=re.M | re.S)
    if match:
        current = None
        for line in match.group(1).splitlines():
            found = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if found:
                current = found.group(1)
                arguments[current] = found.group(2).strip()
            elif current and line.strip():
                arguments[current] += " " + line.strip()
    return " ".join(head.split()), arguments


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


class FunctionTool:
    """A :class:`~espalier.core.infrastructure.contracts.Tool` around a typed function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        min_role: str | None = None,
        sensitive: bool = False,
        trusted_output: bool = False,
    ):
        from pydantic import ConfigDict, create_model

        self.fn = fn
        self.name = name or fn.__name__
        summary, argument_docs = _docstring(fn)
        self.description = description or summary or self.name
        hints = get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for parameter in inspect.signature(fn).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"tool {self.name}: *args and **kwargs cannot be described as JSON arguments")
            annotation = hints.get(parameter.name, Any)
            default = ... if parameter.default is parameter.empty else parameter.default
            fields[parameter.name] = (annotation, default)
        self._model = create_model(f"{self.name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
        schema = _strip_titles(self._model.model_json_schema())
        for argument, text in argument_docs.items():
            if argument in schema.get("properties", {}) and text:
                schema["properties"][argument].setdefault("description", text)
        schema.setdefault("properties", {})
        self.parameters: Mapping[str, Any] = schema
        if min_role is not None:
            self.min_role = min_role
        self.sensitive = sensitive
        self.trusted_output = trusted_output

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # still the plain function for its own callers
        return self.fn(*args, **kwargs)

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        from pydantic import ValidationError

        try:
            checked = self._model.model_validate(dict(arguments))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "arguments"
            raise InvalidInput(
                f"invalid argument '{field}' for tool '{self.name}': {first['msg']}",
                code="invalid_arguments",
                details={"field": field, "tool": self.name},
            ) from None
        value = self.fn(**{name: getattr(checked, name) for name in type(checked).model_fields})
        if isinstance(value, ToolResult):
            return value
        if isinstance(value, str):
            return ToolResult(output=value)
        return ToolResult(output=json.dumps(value, default=str), data=value if isinstance(value, dict) else None)


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    min_role: str | None = None,
    sensitive: bool = False,
    trusted_output: bool = False,
) -> Any:
    """Make a tool of a typed function (``@tool`` or ``@tool(name=..., min_role=...)``); see the module."""

    def wrap(function: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(
            function,
            name=name,
            description=description,
            min_role=min_role,
            sensitive=sensitive,
            trusted_output=trusted_output,
        )

    return wrap(fn) if fn is not None else wrap
