"""Built-in ``pal`` agent (program-aided language model): the model writes a Python program, with
its reasoning as ``#`` comments and its arithmetic as code; the sandbox runs it (the ``python``
tool, never the server process) and the value of ``answer`` is the answer. The program, its
output and the value are in the trace. When the program fails, the error goes back to the model
for one more try (``attempts``).
"""

from __future__ import annotations

import re
from typing import Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import ChatMessage
from espalier.core.tools.agents.service import AgentOutcome

SYSTEM = (
    "Solve the problem by writing a short Python program. Put your reasoning in # comments and do every "
    "calculation in code. Store the final result in a variable named answer. Reply with the program only."
)

EXAMPLES: list[tuple[str, str]] = [
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "# Olivia starts with 23 dollars.\nmoney_initial = 23\n# Five bagels cost 3 dollars each.\n"
        "bagels = 5\nbagel_cost = 3\nmoney_spent = bagels * bagel_cost\n# What is left is the answer.\n"
        "answer = money_initial - money_spent",
    ),
    (
        "Michael had 58 golf balls. On Tuesday, he lost 23 golf balls. On Wednesday, he lost 2 more. "
        "How many golf balls did he have at the end of Wednesday?",
        "# Michael starts with 58 golf balls.\ngolf_balls_initial = 58\n# He loses 23, then 2 more.\n"
        "golf_balls_lost_tuesday = 23\ngolf_balls_lost_wednesday = 2\n"
        "answer = golf_balls_initial - golf_balls_lost_tuesday - golf_balls_lost_wednesday",
    ),
]

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|\Z)", re.S)


def extract_program(text: str) -> str:
    """The code in the model's reply: the first fenced block, else the whole reply."""
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip()


def pal_messages(question: str, feedback: list[tuple[str, str]] | None = None) -> list[ChatMessage]:
    messages = [ChatMessage("system", SYSTEM)]
    for example_question, program in EXAMPLES:
        messages += [ChatMessage("user", example_question), ChatMessage("assistant", program)]
    messages.append(ChatMessage("user", question))
    for program, error in feedback or []:
        messages += [
            ChatMessage("assistant", program),
            ChatMessage("user", f"That program failed:\n{error}\nWrite a corrected program."),
        ]
    return messages


def reasoning(program: str) -> str:
    return " ".join(line.strip().lstrip("#").strip() for line in program.splitlines() if line.strip().startswith("#"))


class PalAgent:
    name = "pal"
    description = "Writes a Python program for a word problem and runs it in the sandbox (GSM8K-style maths)."
    tools = ["python"]
    needs_finish = False

    def __init__(self, *, attempts: int = 2, max_tokens: int = 256):
        self.attempts = attempts
        self.max_tokens = max_tokens

    def run(self, question: str, *, context: Any) -> AgentOutcome:
        feedback: list[tuple[str, str]] = []
        for _attempt in range(self.attempts):
            stop = context.should_stop()
            if stop:
                return AgentOutcome(None, stop, f"{stop.replace('_', ' ')} reached before a program ran")
            raw = context.generate(pal_messages(question, feedback), max_tokens=self.max_tokens)
            program = extract_program(raw)
            observation = context.call_tool("python", {"code": program})
            data = observation.data if isinstance(observation.data, dict) else {}
            context.record_step(
                thought=reasoning(program),
                action="python",
                arguments={"code": program},
                observation=observation,
                raw=raw,
                extra={
                    "program": program,
                    "stdout": data.get("stdout", ""),
                    "value": data.get("value"),
                    "sandbox_ms": round(1000 * data.get("duration_s", 0), 2),
                },
            )
            if not observation.is_error and data.get("ok"):
                value = data.get("value")
                if value is None:
                    feedback.append((program, "The program did not set `answer`."))
                    continue
                return AgentOutcome(format_value(value), "ok")
            feedback.append((program, observation.text[-1000:]))
        return AgentOutcome(None, "error", "no program produced an answer")


def format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@hookimpl(trylast=True)
def register_agents(register):
    register(PalAgent())
