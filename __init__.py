"""Espalier: a self-hosted, plugin-based platform for LLM applications that learns from its users.

This module is the one import surface for plugin authors::

    from espalier import hookimpl, tool, Tool, ToolResult, Retriever, Guardrail, ModelProvider, Principal, access

Everything here is stable: names are added, never removed without a deprecation first. The
names resolve on first use (so importing ``espalier`` loads nothing heavy, and the platform's own
modules may import ``espalier.hookimpl`` without a cycle).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import pluggy

try:
    __version__ = version("espalier")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

#: Decorator for hook implementations: ``@espalier.hookimpl``.
hookimpl = pluggy.HookimplMarker("espalier")

_CONTRACTS = "espalier.core.infrastructure.contracts"
#: name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # what plugins contribute (protocols and value types)
    **dict.fromkeys(
        (
            "Agent",
            "ChainSpec",
            "ChatMessage",
            "ChatModel",
            "Command",
            "CompletionEvent",
            "Direction",
            "DocumentExtractor",
            "Embedder",
            "FeedbackEvent",
            "Generation",
            "GenerationParams",
            "Guardrail",
            "GuardrailDecisionEvent",
            "GuardrailScore",
            "JobContext",
            "JobEvent",
            "JobKind",
            "KeywordIndex",
            "ModelProvider",
            "ModelSpec",
            "Plotter",
            "RetrievedChunk",
            "Retriever",
            "TemplateSpec",
            "TokenDelta",
            "Tool",
            "ToolResult",
            "Trainer",
            "VectorStore",
        ),
        _CONTRACTS,
    ),
    # who is calling, and the roles
    "Principal": "espalier.core.infrastructure.identity",
    "ROLES": "espalier.core.infrastructure.identity",
    "require_role": "espalier.core.infrastructure.identity",
    # errors a plugin raises so the API answers with the right status and message
    "EspalierError": "espalier.core.infrastructure.errors",
    "InvalidInput": "espalier.core.infrastructure.errors",
    "NotFound": "espalier.core.infrastructure.errors",
    "Forbidden": "espalier.core.infrastructure.errors",
    "Conflict": "espalier.core.infrastructure.errors",
    "Unavailable": "espalier.core.infrastructure.errors",
    # routes: the role a route needs, and the caller as a handler parameter
    "access": "espalier.api.guards",
    "CurrentPrincipal": "espalier.api.guards",
    "PUBLIC": "espalier.api.guards",
    # testing a plugin: a scripted chat model plugin for control-flow tests (needs pytest installed)
    "ScriptedModels": "espalier.api.testing",
    # tools from plain typed functions: ``@espalier.tool``
    "tool": "espalier.core.tools.functions",
    "FunctionTool": "espalier.core.tools.functions",
    # the running platform (the type hooks receive) and its settings
    "Platform": "espalier.core.platform",
    "Settings": "espalier.core.infrastructure.settings",
}
#: modules re-exported whole: ``from espalier import errors``
_MODULES = {"errors": "espalier.core.infrastructure.errors"}

__all__ = ["__version__", "hookimpl", *sorted(_EXPORTS), *sorted(_MODULES)]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'espalier' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ruff: noqa: F401  (the names below are re-exported: __all__ is built from _EXPORTS, which ruff cannot read)
if TYPE_CHECKING:  # what type checkers and editors see
    from espalier.api.guards import PUBLIC, CurrentPrincipal, access
    from espalier.core.infrastructure import errors
    from espalier.core.infrastructure.contracts import (
        Agent,
        ChainSpec,
        ChatMessage,
        ChatModel,
        Command,
        Direction,
        DocumentExtractor,
        Embedder,
        FeedbackEvent,
        Generation,
        GenerationParams,
        Guardrail,
        GuardrailScore,
        JobContext,
        JobKind,
        KeywordIndex,
        ModelProvider,
        ModelSpec,
        Plotter,
        RetrievedChunk,
        Retriever,
        TemplateSpec,
        TokenDelta,
        Tool,
        ToolResult,
        Trainer,
        VectorStore,
    )
    from espalier.core.infrastructure.errors import (
        Conflict,
        EspalierError,
        Forbidden,
        InvalidInput,
        NotFound,
        Unavailable,
    )
    from espalier.core.infrastructure.identity import ROLES, Principal, require_role
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform
