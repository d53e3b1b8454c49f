"""Reading a ReAct step out of the model's text: ``Thought: ...`` then ``Action: tool[input]`` (or a
JSON object). Only the model's own text is parsed: observations never reach this code."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_THOUGHT = re.compile(r"Thought\s*\d*\s*:\s*(.*?)(?=\n\s*Action\s*\d*\s*:|\Z)", re.S | re.I)
_ACTION = re.compile(r"Action\s*\d*\s*:\s*(.*)", re.S | re.I)
_BRACKET = re.compile(r"^([A-Za-z0-9_.:-]{1,64})\s*\[(.*)\]\s*$", re.S)


@dataclass
class ParsedStep:
    thought: str
    tool: str | None
    argument_text: str | None
    arguments: dict[str, Any] | None
    problem: str | None = None


def _first_action_line(text: str) -> str:
    """The action up to its closing bracket or the end of its JSON object, not the model's rambling after."""
    text = text.strip()
    if text.startswith("{"):
        try:
            obj, end = json.JSONDecoder().raw_decode(text)
            return text[:end]
        except ValueError:
            return text.splitlines()[0]
    depth = 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return text[: index + 1]
    return text.splitlines()[0] if text else ""


def parse_step(text: str) -> ParsedStep:
    thought_match = _THOUGHT.search(text)
    thought = thought_match.group(1).strip() if thought_match else ""
    action_match = _ACTION.search(text)
    if not action_match:
        if not thought:
            thought = text.strip()
        return ParsedStep(thought, None, None, None, "no Action line")
    action = _first_action_line(action_match.group(1))
    if action.startswith("{"):
        try:
            obj = json.loads(action)
        except ValueError:
            return ParsedStep(thought, None, action, None, "the Action is not valid JSON")
        tool = obj.get("tool") or obj.get("action") or obj.get("name") if isinstance(obj, dict) else None
        arguments = obj.get("arguments", obj.get("args", obj.get("input"))) if isinstance(obj, dict) else None
        if not isinstance(tool, str):
            return ParsedStep(thought, None, action, None, 'a JSON Action needs "tool" and "arguments"')
        if isinstance(arguments, str):
            return ParsedStep(thought, tool, arguments, None)
        return ParsedStep(thought, tool, None, arguments if isinstance(arguments, dict) else {})
    bracket = _BRACKET.match(action)
    if not bracket:
        return ParsedStep(thought, None, action, None, "the Action is not written as tool[input]")
    tool, inner = bracket.group(1), bracket.group(2).strip()
    if inner.startswith("{"):
        try:
            obj = json.loads(inner)
            if isinstance(obj, dict):
                return ParsedStep(thought, tool, None, obj)
        except ValueError:
            pass
    return ParsedStep(thought, tool, inner, None)


def single_text_parameter(schema: Mapping[str, Any]) -> str | None:
    """The one string argument a plain ``tool[text]`` fills, if the schema has exactly one required."""
    properties = schema.get("properties", {})
    required = list(schema.get("required", []))
    candidates = required if len(required) == 1 else (list(properties) if len(properties) == 1 else [])
    if len(candidates) == 1 and properties.get(candidates[0], {}).get("type") == "string":
        return candidates[0]
    return None
