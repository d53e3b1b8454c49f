"""Untrusted text (retrieved passages, tool output, agent observations, tool results a consumer
sends back) enters a prompt through :func:`quote_data` and nothing else.

The scheme is a quoted block: an optional one-line header, then every line of the text prefixed
with ``| ``. Whatever the text holds, it cannot leave its block:

* every line break Python knows (``\\r``, ``\\u2028``, form feed...) starts a new *prefixed* line, so
  no line of the text can pose as the transcript's own ``Action:``, ``Observation:`` or ``[2]``
  lines, nor as a role marker on a line of its own;
* markers that chat templates and tool-call formats use (``<|im_end|>``, ``<|im_start|>``,
  ``</s>``, ``[INST]``, ``<tool_call>``, ``<start_of_turn>``...) are defused by swapping their angle
  or square brackets for look-alike characters: a tokenizer would otherwise read the literal
  text ``<|im_end|>`` as the special token that ends the turn;
* other control characters are dropped and the block is cut at ``limit`` characters.

Prompts that show quoted blocks say that they are data, not instructions (the ReAct prompt,
grounded answers, tool results in chat completions).
"""

from __future__ import annotations

import re
import unicodedata

PREFIX = "| "

# <|anything|>, <s>, </s>, <tool_call>, </tool_response>, <start_of_turn>, <|eot_id|>: a bracket
# pair around a short marker name; [INST], [/INST], [TOOL_CALLS], [AVAILABLE_TOOLS] and the like.
_ANGLE_MARKER = re.compile(r"<\s*/?\s*(?:\|[^<>\n]{0,60}?\||[A-Za-z_][A-Za-z0-9_:.\-]{0,40}\s*)>")
_SQUARE_MARKER = re.compile(r"\[\s*/?\s*[A-Z][A-Z_]{1,30}\s*\]")
_ANGLE = str.maketrans({"<": "\u2039", ">": "\u203a", "|": "\u00a6"})  # ‹ › ¦
_SQUARE = str.maketrans({"[": "\u27e6", "]": "\u27e7"})  # ⟦ ⟧


def defuse(text: str) -> str:
    """``text`` with chat-template and tool-call markers made inert, and no control characters
    other than line breaks and tabs."""
    text = _ANGLE_MARKER.sub(lambda m: m.group(0).translate(_ANGLE), text)
    text = _SQUARE_MARKER.sub(lambda m: m.group(0).translate(_SQUARE), text)
    return "".join(
        char
        for char in text
        if char in "\n\t" or not unicodedata.category(char).startswith("C") or char in "\r\x0b\x0c\x1c\x1d\x1e\x85"
    )


def quote_data(text: str, *, header: str = "", limit: int | None = None) -> str:
    """``text`` as a quoted block of data (see the module docstring).

    ``header`` (a source name, a tool name) is untrusted too: it is defused and kept to one line.
    ``limit`` cuts the text (before quoting) and marks the cut with `` ...``.
    """
    if limit is not None and len(text) > limit:
        text = text[:limit] + " ..."
    lines = [PREFIX + line.rstrip() for line in defuse(text).splitlines()] or [PREFIX.rstrip()]
    body = "\n".join(lines)
    if header:
        title = " ".join(defuse(header).split())[:200]
        return f"{title}\n{body}"
    return body
