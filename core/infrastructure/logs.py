"""Logging set-up: one JSON object per line (or plain text), secrets never included."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_SECRET = re.compile(r"esp_[0-9a-f]+_[A-Za-z0-9-]+")


def redact(text: str) -> str:
    """Mask anything shaped like an Espalier API key."""
    return _SECRET.sub(lambda m: m.group(0).rsplit("_", 1)[0] + "_***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        return redact(super().format(record) + (f" {extras}" if extras else ""))


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("espalier")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
