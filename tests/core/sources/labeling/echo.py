"""A scripted chat model for the labeling control flow: candidate i of a prompt is "<prompt> #i"
(distinct, predictable). The real model runs the same flow in tests/core/sources/feedback/test_reward_loop.py."""

from __future__ import annotations

from espalier import hookimpl
from espalier.core.infrastructure import contracts


class EchoModel:
    context_window = 512

    def count_tokens(self, messages):
        return sum(len(m.content.split()) for m in messages)

    def generate(self, messages, params, cancel=None):
        prompt = messages[-1].content
        return [contracts.Generation(f"{prompt} #{i}", "stop", self.count_tokens(messages), 3) for i in range(params.n)]

    def stream(self, messages, params, cancel=None):
        raise NotImplementedError


class EchoProvider:
    name = "echo"

    def load(self, spec, *, cache_dir):
        return EchoModel()


class EchoPlugin:
    @hookimpl
    def register_model_providers(self, register):
        register(EchoProvider())

    @hookimpl
    def register_models(self, register):
        register(contracts.ModelSpec(name="echo", provider="echo", source="memory"))
