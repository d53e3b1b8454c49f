"""Named contributions from plugins, each remembered with the plugin that gave it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from espalier.core.infrastructure.errors import PluginError

T = TypeVar("T")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    item: T
    plugin: str


class Registry(Generic[T]):
    """One kind of contribution (tools, embedders...). Duplicate names are a start-up error."""

    def __init__(self, kind: str, protocol: type | None = None):
        self.kind = kind
        self.protocol = protocol
        self._entries: dict[str, Entry[T]] = {}
        self._default: str | None = None

    def add(self, item: T, *, plugin: str, default: bool = False) -> None:
        """``default``: the plugin offers the item as the one to use when a setting names none.
        The first offer wins (hooks run tryfirst, then plain, then trylast: a built-in offers
        with ``trylast``, so an installed plugin's offer comes first)."""
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PluginError(
                f"plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}: names are "
                "1-64 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
            )
        if self.protocol is not None and not isinstance(item, self.protocol):
            missing = [attr for attr in getattr(self.protocol, "__protocol_attrs__", ()) if not hasattr(item, attr)]
            raise PluginError(
                f"plugin '{plugin}' registered {self.kind} '{name}' that is not a {self.protocol.__name__}"
                + (f" (missing: {', '.join(sorted(missing))})" if missing else "")
            )
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} '{name}' is registered by both plugin '{other}' and plugin '{plugin}'; "
                f"disable one of them (ESPALIER_DISABLE_PLUGINS) or rename the {self.kind}"
            )
        self._entries[name] = Entry(name, item, plugin)
        if default and self._default is None:
            self._default = name

    def choose(self, name: str | None, setting: str) -> T:
        """The item a setting names, else the one a plugin offered as default, else the only one.

        :param setting: the setting's environment variable, for the message when none applies.
        """
        from espalier.core.infrastructure.errors import Unavailable

        if name:
            return self.get(name)
        if self._default is not None:
            return self.get(self._default)
        if len(self._entries) == 1:
            return next(iter(self._entries.values())).item
        raise Unavailable(
            f"no {self.kind} is chosen: set {setting} to one of {', '.join(sorted(self._entries)) or 'none'}"
        )

    def get(self, name: str) -> T:
        from espalier.core.infrastructure.errors import NotFound

        try:
            return self._entries[name].item
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise NotFound(f"no {self.kind} named '{name}' (available: {known})") from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> dict[str, Any]:
        return {name: entry.item for name, entry in self._entries.items()}
