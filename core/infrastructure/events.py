"""Events sent to plugins. A plugin's failure is logged; it never undoes what already happened."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from espalier.core.infrastructure.contracts import FeedbackEvent

if TYPE_CHECKING:
    from espalier.core.platform import Platform

log = logging.getLogger("espalier.events")


def announce_feedback(platform: Platform, event: FeedbackEvent) -> None:
    """Tell the plugins of stored feedback. A serving platform does it off the request path (a
    thread of its own, so a slow plugin never delays an acknowledgement); a command-line one
    before the command returns, so a retrain it starts is queued before the process exits."""
    if platform.events_inline:
        notify_feedback(platform, event)
        return
    threading.Thread(target=notify_feedback, args=(platform, event), name="espalier-on-feedback", daemon=True).start()


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


def announce(platform: Platform, hook: str, event: object) -> None:
    """Send ``event`` to every implementation of the ``on_*`` hook ``hook``, as :func:`announce_feedback`
    does: off the caller's path on a server, before returning in the CLI; failures are logged."""
    caller = getattr(platform.plugins.pm.hook, hook, None)
    if caller is None or not caller.get_hookimpls():
        return  # nobody listens: no thread
    if platform.events_inline:
        notify(platform, hook, event)
        return
    threading.Thread(target=notify, args=(platform, hook, event), name=f"espalier-{hook}", daemon=True).start()


def notify(platform: Platform, hook: str, event: object) -> list[BaseException]:
    """Call every implementation of ``hook`` with ``event``; return the errors (each already logged)."""
    errors: list[BaseException] = []
    for impl in reversed(getattr(platform.plugins.pm.hook, hook).get_hookimpls()):
        arguments = {"event": event, "platform": platform}
        try:
            impl.function(*[arguments[name] for name in impl.argnames])
        except Exception as exc:
            log.exception("plugin '%s' failed in %s", impl.plugin_name, hook)
            errors.append(exc)
    return errors
