"""How the service's log lines look: one JSON object per line (the default, for a log pipeline)
or plain text (for a person at a terminal, `make serve`), for uvicorn's loggers and `app.*` alike.

A line carries `time`, `level`, `logger`, `message`, the `request_id` of the request it was
written for (if any), and the structured `fields` a caller passes as `extra={"fields": {...}}`.
Written with orjson rather than a logging library: one `dumps` per line, and these few lines
are all it takes.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

# the request being served, set by the HTTP middleware; every line logged for it carries it
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

LogFormat = Literal["json", "text"]


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, option=orjson.OPT_UTC_Z, default=str).decode()


class TextFormatter(logging.Formatter):
    """A record as one readable line: time, level, logger, message, then its fields as k=v."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = dict(getattr(record, "fields", None) or {})
        request_id = REQUEST_ID.get()
        if request_id is not None and "request_id" not in extras:
            extras["request_id"] = request_id
        if not extras:
            return line
        first, newline, rest = line.partition("\n")  # a traceback stays below the line
        pairs = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{first} {pairs}{newline}{rest}"


def log_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """logging.config.dictConfig's dictionary for uvicorn and the service's own `app.*` loggers
    (the access log `app.access` among them): every line on stderr in `log_format`."""
    formatter = {"()": f"{__name__}.{'JsonFormatter' if log_format == 'json' else 'TextFormatter'}"}
    handler = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            name: {"handlers": ["default"], "level": upper, "propagate": False}
            for name in ("uvicorn", "uvicorn.access", "app")
        }
        | {"uvicorn.error": {"level": upper}},
    }
