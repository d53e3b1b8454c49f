"""Built-in ``calculator`` tool: exact arithmetic for models that cannot do it.

Evaluates a parsed expression tree of numbers and arithmetic operators only. It never runs
code: names, calls and attributes are rejected before evaluation.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from typing import Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import ToolResult

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION = 200
MAX_EXPONENT = 1000


class CalculatorError(ValueError):
    pass


def evaluate(expression: str) -> float | int:
    if len(expression) > MAX_EXPRESSION:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace(",", ""), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from exc
    return _eval(tree.body)


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise CalculatorError("division by zero") from exc
    raise CalculatorError(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")


class Calculator:
    name = "calculator"
    trusted_output = True  # computed from the caller's own arguments, never outside text
    description = "Evaluate an arithmetic expression exactly, e.g. '(12 + 30) * 1.5'."
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "Numbers and + - * / // % ** ( )"}},
        "required": ["expression"],
        "additionalProperties": False,
    }

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult:
        expression = arguments.get("expression")
        if not isinstance(expression, str):
            return ToolResult(output="expression must be a string", is_error=True)
        try:
            value = evaluate(expression)
        except CalculatorError as exc:
            return ToolResult(output=str(exc), is_error=True)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        return ToolResult(output=str(value), data=value)


@hookimpl
def register_tools(register):
    register(Calculator())
