"""Espalier: a self-hosted, plugin-based platform for LLM applications that learns from its users."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("espalier")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

#: Decorator for hook implementations: ``@espalier.hookimpl``.
hookimpl = pluggy.HookimplMarker("espalier")

__all__ = ["__version__", "hookimpl"]
