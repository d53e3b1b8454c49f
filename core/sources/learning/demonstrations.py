"""Demonstrations for supervised fine-tuning: curated conversations and users' corrections.

A curated file is JSONL, one demonstration a line: ``{"messages": [...]}`` whose last message is
the assistant's answer to learn, or ``{"prompt": ..., "completion": ...}``. Prompts are kept as
Human/Assistant transcripts, the layout pairs use, so every trainer renders them the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.errors import InvalidInput

MAX_ROWS = 50_000


@dataclass
class Demonstration:
    """One training row: a prompt (transcript or plain text) and the answer to learn."""

    prompt: str
    completion: str
    source: str  # sampled, curated, correction
    score: float | None = None  # sampled: what chose it (see the rsft method)
    reward: float | None = None  # sampled: the reward model's score
    toxicity: float | None = None  # sampled: the toxicity scorer's


def demonstrations(pairs: Any, sft_path: str | None, *, include_corrections: bool = True) -> list[Demonstration]:
    """The ``sft`` method's rows: the curated file, then users' corrections (from ``pairs``, the
    pair store: a correction is the chosen side of a pair of origin ``correction``)."""
    rows: list[Demonstration] = []
    if sft_path:
        rows += load_demonstrations(sft_path)
    if include_corrections:
        rows += [
            Demonstration(p.prompt, p.chosen, "correction")
            for p in pairs.all(include_imported=False)
            if p.origin == "correction"
        ]
    return rows


def load_demonstrations(path: str) -> list[Demonstration]:
    """Curated rows from JSONL: ``{"messages": [...]}`` (the last one the assistant's answer) or
    ``{"prompt": ..., "completion": ...}``. A bad line is refused with its number."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidInput(f"sft_path {path} is not a file", code="file_not_found")
    rows: list[Demonstration] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if len(rows) >= MAX_ROWS:
            raise InvalidInput(f"{path} has more than {MAX_ROWS} demonstrations; give a sample")
        try:
            row = json.loads(line)
        except ValueError:
            raise InvalidInput(f"{path} line {number} is not JSON") from None
        if isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]:
            *context, answer = row["messages"]
            if not all(isinstance(m, dict) for m in row["messages"]):
                raise InvalidInput(f"{path} line {number}: every message must be an object with role and content")
            if answer.get("role") != "assistant" or not context:
                raise InvalidInput(f"{path} line {number}: the last message must be the assistant's, after others")
            prompt = "".join(
                f"\n\n{'Human' if m.get('role') == 'user' else str(m.get('role', '')).title()}: {m.get('content', '')}"
                for m in context
            )
            rows.append(Demonstration(prompt + "\n\nAssistant:", str(answer.get("content", "")), "curated"))
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            rows.append(Demonstration(row["prompt"], row["completion"], "curated"))
        else:
            raise InvalidInput(f"{path} line {number}: give 'messages' or 'prompt' and 'completion'")
    return rows
