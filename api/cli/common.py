"""What every CLI command shares: the consoles, the platform for one command, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

console = Console()
err = Console(stderr=True)


def platform(*, migrate: bool = True):
    """The platform for one CLI command: settings from the environment, schema brought up to date."""
    from espalier.core.infrastructure.settings import load_settings
    from espalier.core.platform import Platform

    settings = load_settings()
    settings.ensure_dirs()
    instance = Platform(settings)
    instance.events_inline = True  # a retrain that feedback starts is queued before the command exits
    if migrate:
        instance.migrate()
    return instance


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
