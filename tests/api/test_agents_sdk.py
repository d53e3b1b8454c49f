"""The OpenAI Agents SDK pointed at Espalier, unchanged: an agent with a function tool runs over
the Responses API and over chat completions against a real server with the shipped model."""

from __future__ import annotations

import agents  # the OpenAI Agents SDK (a dev dependency)
import anyio
import pytest

MODEL = "smollm2-135m-instruct"


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_an_agent_with_a_function_tool_runs(server, user_key, api):
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)  # no traces sent to OpenAI's servers
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"Sunny in {city}, 21 C"

    client = AsyncOpenAI(base_url=server.base + "/v1", api_key=user_key, max_retries=0, timeout=600)
    model_class = agents.OpenAIResponsesModel if api == "responses" else agents.OpenAIChatCompletionsModel
    agent = agents.Agent(
        name="weather",
        instructions="Use the tool to answer.",
        tools=[get_weather],
        model=model_class(MODEL, client),
        model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=60),
        tool_use_behavior="stop_on_first_tool",
    )

    async def run():
        return await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    result = anyio.run(run)
    assert calls and result.final_output == f"Sunny in {calls[0]}, 21 C"
