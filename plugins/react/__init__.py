"""Built-in ``react`` agent: Thought / Action / Observation until ``finish[answer]`` or a limit.

The loop only ever reads actions from the model's own text (generation stops before the
model could write an Observation), validates each against the run's allowed tools (an invalid
one becomes an Observation saying so), and hands tool output back quoted, through the
platform's :class:`~espalier.core.tools.agents.service.AgentContext`, which also scores it for injection.
"""

from __future__ import annotations

import json
from typing import Any

from espalier import hookimpl
from espalier.core.tools.agents.service import AgentOutcome
from espalier.plugins.react.parsing import ParsedStep, parse_step, single_text_parameter
from espalier.plugins.react.prompt import EXAMPLES, build_messages

STOP = ("\nObservation", "Observation:", "\nQuestion:")
FORMAT_HELP = "Write: Thought: <reasoning> then Action: <tool>[<input>], for example finish[42]."


class ReActAgent:
    name = "react"
    description = "Reasons step by step and acts with tools (search, lookup, calculator), then finishes."
    tools = ["search", "lookup", "calculator", "finish"]

    def __init__(self, *, examples: str = EXAMPLES, max_tokens: int = 128):
        self.examples = examples
        self.max_tokens = max_tokens

    def run(self, question: str, *, context: Any) -> AgentOutcome:
        scratchpad: list[str] = []
        while True:
            stop = context.should_stop()
            if stop:
                return AgentOutcome(None, stop, _limit_message(stop))
            messages = build_messages(question, context.tools, scratchpad, self.examples)
            raw = context.generate(messages, max_tokens=self.max_tokens, stop=STOP)
            parsed = parse_step("Thought: " + raw if not raw.lstrip().lower().startswith("thought") else raw)
            arguments, problem = self._arguments(parsed, context.tools)
            if problem is not None:
                observation = f"Invalid action: {problem}. {FORMAT_HELP}"
                context.record_step(
                    thought=parsed.thought,
                    action=parsed.tool,
                    observation=observation,
                    raw=raw,
                    extra={"invalid": True},
                )
                scratchpad += [_echo(parsed, raw), f"Observation:\n| {observation}"]
                continue
            if parsed.tool == "finish":
                answer = str(arguments.get("answer", "")).strip()
                context.record_step(thought=parsed.thought, action="finish", arguments={"answer": answer}, raw=raw)
                return AgentOutcome(answer, "ok")
            observation = context.call_tool(parsed.tool, arguments)
            context.record_step(
                thought=parsed.thought,
                action=parsed.tool,
                arguments=observation.arguments or arguments,
                observation=observation,
                raw=raw,
            )
            scratchpad += [_echo(parsed, raw), f"Observation:\n{observation.for_model}"]

    @staticmethod
    def _arguments(parsed: ParsedStep, tools: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        if parsed.problem:
            return {}, parsed.problem
        if parsed.tool not in tools:
            return {}, f"'{parsed.tool}' is not an available action; use one of {', '.join(sorted(tools))}"
        if parsed.arguments is not None:
            return parsed.arguments, None
        field = single_text_parameter(tools[parsed.tool].parameters)
        if field is None:
            return {}, f"{parsed.tool} takes JSON arguments: {parsed.tool}[{{...}}]"
        return {field: parsed.argument_text or ""}, None


def _echo(parsed: ParsedStep, raw: str) -> str:
    """The model's own step as the next prompt shows it (only what was parsed, not trailing text)."""
    if parsed.tool is None:
        return f"Thought: {parsed.thought}\nAction: {(parsed.argument_text or '').strip()}"
    inner = parsed.argument_text if parsed.argument_text is not None else _json(parsed.arguments)
    return f"Thought: {parsed.thought}\nAction: {parsed.tool}[{inner}]"


def _json(value: Any) -> str:
    return json.dumps(value or {})


def _limit_message(status: str) -> str:
    return {
        "step_limit": "stopped at the step limit before finishing",
        "time_limit": "stopped at the time limit before finishing",
        "cancelled": "cancelled",
    }.get(status, status)


@hookimpl(trylast=True)
def register_agents(register):
    register(ReActAgent(), default=True)  # the agent chains with tools run unless ESPALIER_CHAIN_AGENT says
