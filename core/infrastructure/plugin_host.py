"""The plugin host: a pluggy manager per platform, built-ins first, then entry points.

No global manager: ``create_plugin_manager(settings)`` builds one, the platform keeps it.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from espalier.core.infrastructure import hookspecs
from espalier.core.infrastructure.errors import PluginError
from espalier.core.infrastructure.registry import Registry
from espalier.core.infrastructure.settings import Settings

log = logging.getLogger("espalier.plugins")

PROJECT = "espalier"
ENTRY_POINT_GROUP = "espalier"

#: Built-in plugins, registered through the same hooks a third party uses.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "espalier.plugins.calculator",
    "espalier.plugins.sandbox",
    "espalier.plugins.agent_tools",
    "espalier.plugins.sql_tool",
    "espalier.plugins.mcp_client",
    "espalier.plugins.react",
    "espalier.plugins.pal",
    "espalier.plugins.chains",
    "espalier.plugins.remote_models",
    "espalier.plugins.transformers_models",
    "espalier.plugins.minilm_embedder",
    "espalier.plugins.chroma_store",
    "espalier.plugins.bm25_index",
    "espalier.plugins.document_extractors",
    "espalier.plugins.prompt_library",
    "espalier.plugins.toxicity",
    "espalier.plugins.injection",
    "espalier.plugins.retrieval",
    "espalier.plugins.sql_retriever",
    "espalier.plugins.reward_models",
    "espalier.plugins.policy_eval",
    "espalier.plugins.plots",
    "espalier.plugins.constitution",
    "espalier.plugins.policy_training",
)

#: Built-ins that cannot be disabled: the platform is not itself without them.
ESSENTIAL_PLUGINS: frozenset[str] = frozenset()


def _normalise(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


@dataclass
class PluginInfo:
    name: str
    version: str | None
    distribution: str | None
    builtin: bool


@dataclass
class PluginFailure:
    name: str
    distribution: str | None
    error: str
    hook: str = "load"  # where it failed: loading, or a lifecycle hook such as startup


@dataclass
class PluginHost:
    """A loaded plugin manager plus what the host learnt while loading it."""

    pm: pluggy.PluginManager
    settings: Settings
    info: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    # Contributions ----------------------------------------------------------------------
    def collect(self, hook_name: str, kind: str, protocol: type | None = None, **arguments: Any) -> Registry[Any]:
        """Call a ``register_*`` hook on every plugin, attributing each item to its plugin.

        ``arguments`` are the hook's other parameters (e.g. ``settings``), passed by name to the
        implementations that accept them.
        """
        registry: Registry[Any] = Registry(kind, protocol)
        self.each_impl(
            hook_name,
            lambda plugin: lambda item, **options: registry.add(item, plugin=plugin, **options),
            **arguments,
        )
        return registry

    def collect_list(self, hook_name: str, **arguments: Any) -> list[tuple[Any, str]]:
        """Like :meth:`collect` for unnamed contributions (routes): ``[(item, plugin), ...]``."""
        items: list[tuple[Any, str]] = []
        self.each_impl(hook_name, lambda plugin: lambda item: items.append((item, plugin)), **arguments)
        return items

    def each_impl(
        self, hook_name: str, make_register: Callable[[str], Callable[[Any], None]], **arguments: Any
    ) -> None:
        caller = getattr(self.pm.hook, hook_name)
        # pluggy calls implementations last-registered-first (tryfirst/trylast respected).
        for impl in reversed(caller.get_hookimpls()):
            register = make_register(impl.plugin_name)
            try:
                impl.function(
                    *[arguments.get(name, register) if name != "register" else register for name in impl.argnames]
                )
            except PluginError:
                raise
            except Exception as exc:  # a plugin's own bug: name it
                raise PluginError(f"plugin '{impl.plugin_name}' failed in {hook_name}: {exc!r}") from exc

    def call_each(self, hook_name: str, **arguments: Any) -> list[PluginFailure]:
        """Call every implementation of a lifecycle hook (``startup``, ``shutdown``) on its own:
        one that raises is logged with its plugin's name and traceback, recorded, and the others
        still run (pluggy alone stops at the first exception). Returns the failures."""
        failed = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                impl.function(*[arguments[name] for name in impl.argnames])
            except Exception as exc:
                log.exception("plugin '%s' failed in %s; the other plugins carry on", impl.plugin_name, hook_name)
                info = self.info.get(impl.plugin_name)
                distribution = getattr(info, "distribution", None)
                failed.append(PluginFailure(impl.plugin_name, distribution, repr(exc), hook=hook_name))
        return failed

    # Introspection ------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for plugin in self.pm.get_plugins():
            name = self.pm.get_name(plugin)
            if name is None:
                continue
            info = self.info.get(name, PluginInfo(name, None, None, False))
            hooks = sorted(caller.name for caller in (self.pm.get_hookcallers(plugin) or []))
            rows.append(
                {
                    "name": name,
                    "version": info.version,
                    "distribution": info.distribution,
                    "builtin": info.builtin,
                    "hooks": hooks,
                }
            )
        return sorted(rows, key=lambda row: (not row["builtin"], row["name"]))


def _espalier_version() -> str:
    from espalier import __version__

    return __version__


def create_plugin_manager(
    settings: Settings, *, extra_plugins: list[tuple[str, Any]] | None = None, load_entry_points: bool = True
) -> PluginHost:
    """Build a plugin manager: hook specs, built-ins, entry-point plugins, then ``check_pending``.

    ``extra_plugins`` registers ``(name, object)`` pairs directly (tests, the pytest fixture).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm=pm, settings=settings)
    disabled = _disabled_names(settings)
    for name in disabled & ESSENTIAL_PLUGINS:
        raise PluginError(f"plugin '{name}' is essential and cannot be disabled")
    for name in disabled:
        pm.set_blocked(name)

    version = _espalier_version()
    for module_name in DEFAULT_PLUGINS:
        short = module_name.rsplit(".", 1)[-1]
        if short in disabled:
            continue
        module = _import_builtin(module_name, settings, host)
        if module is not None:
            pm.register(module, name=short)
            host.info[short] = PluginInfo(short, version, "espalier", True)

    if load_entry_points:
        _load_entry_points(host, disabled)

    for name, plugin in extra_plugins or []:
        if name in disabled:
            continue
        pm.register(plugin, name=name)
        host.info[name] = PluginInfo(name, getattr(plugin, "__version__", None), None, False)

    # A hook implementation no spec names (a misspelt hook) fails its own plugin only, as an import
    # error does: that plugin is unregistered and reported; the others keep every contribution.
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or "?"
            error = PluginError(f"{exc} (is the hook name misspelt? see docs/plugins.md for the hooks)")
            if settings.strict_plugins or exc.plugin is None:
                raise error from exc
            pm.unregister(exc.plugin)
            info = host.info.pop(name, None)
            log.error("plugin '%s' skipped: %s", name, error)
            host.failures.append(PluginFailure(name, getattr(info, "distribution", None), str(error)))
    return host


def _import_builtin(module_name: str, settings: Settings, host: PluginHost) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        return _fail(host, module_name.rsplit(".", 1)[-1], "espalier", exc, settings)


def _disabled_names(settings: Settings) -> set[str]:
    """``ESPALIER_DISABLE_PLUGINS`` as plugin names: each entry is a plugin's name (a built-in's, or
    an entry point's) or a distribution's, whose entry points it then names. A name that is none of
    these is logged, as it blocks nothing."""
    given = set(settings.disable_plugins)
    names = {name for name in given}
    by_dist: dict[str, set[str]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None:
            by_dist.setdefault(_normalise(ep.dist.name), set()).add(ep.name)
    known = {module.rsplit(".", 1)[-1] for module in DEFAULT_PLUGINS} | {n for v in by_dist.values() for n in v}
    for name in given:
        names |= by_dist.get(_normalise(name), set())
        if name not in known and _normalise(name) not in by_dist:
            log.warning(
                "ESPALIER_DISABLE_PLUGINS names '%s', which is no plugin or distribution here; it blocks nothing", name
            )
    return names


def _load_entry_points(host: PluginHost, disabled: set[str]) -> None:
    settings = host.settings
    raw_allowed = None if settings.plugins is None else set(settings.plugins)
    allowed = None if raw_allowed is None else {_normalise(name) for name in raw_allowed}
    seen: set[str] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        seen |= {ep.name, _normalise(dist)} if dist else {ep.name}
        # the allow-list takes distributions' names and plugins' (entry-point) names alike
        if allowed is not None and not (
            (dist is not None and _normalise(dist) in allowed) or ep.name in (raw_allowed or set())
        ):
            continue
        if ep.name in disabled or host.pm.get_plugin(ep.name) is not None:
            if ep.name not in disabled:
                log.warning("plugin %s from %s is already registered; skipped", ep.name, dist)
            continue
        try:
            plugin = ep.load()
            host.pm.register(plugin, name=ep.name)
        except pluggy.PluginValidationError as exc:
            _fail(host, ep.name, dist, exc, settings)
            continue
        except Exception as exc:
            _fail(host, ep.name, dist, exc, settings)
            continue
        host.info[ep.name] = PluginInfo(ep.name, ep.dist.version if ep.dist else None, dist, False)
    for name in sorted(raw_allowed or set()):
        if name not in seen and _normalise(name) not in seen:
            log.warning(
                "ESPALIER_PLUGINS names '%s', which is no installed plugin or distribution; it allows nothing", name
            )


def _where(exc: BaseException) -> str:
    """The file and line a failure was raised at (the innermost frame), for the log and the
    failure report: "failed to load: NameError(...)" alone sends a plugin author searching."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _fail(host: PluginHost, name: str, dist: str | None, exc: BaseException, settings: Settings) -> None:
    where = _where(exc)
    message = (
        f"plugin '{name}'"
        + (f" from distribution '{dist}'" if dist else "")
        + f" failed to load: {exc!r}"
        + (f" at {where}" if where else "")
    )
    if settings.strict_plugins:
        raise PluginError(message + " (ESPALIER_STRICT_PLUGINS is on)") from exc
    log.error(message + "; skipped", exc_info=exc)  # with the traceback
    host.failures.append(PluginFailure(name, dist, repr(exc) + (f" at {where}" if where else "")))
    return None
