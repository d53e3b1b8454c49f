"""Events sent to plugins. A plugin's failure is logged; it never undoes what already happened."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from espalier.core.infrastructure.contracts import FeedbackEvent

if TYPE_CHECKING:
    from espalier.core.platform import Platform

log = logging.getLogger("espalier.events")


def notify_feedback(platform: Platform, event: FeedbackEvent) -> list[BaseException]:
    """Call every ``on_feedback`` implementation; return the errors (each already logged)."""
    errors: list[BaseException] = []
    for impl in reversed(platform.plugins.pm.hook.on_feedback.get_hookimpls()):
        arguments = {"event": event, "platform": platform}
        try:
            impl.function(*[arguments[name] for name in impl.argnames])
        except Exception as exc:
            log.exception("plugin '%s' failed in on_feedback for %s", impl.plugin_name, event.feedback_id)
            errors.append(exc)
    return errors
