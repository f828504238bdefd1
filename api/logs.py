"""Log lines on stdout, JSON or text, each carrying the id of the request that wrote it."""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]

# The id of the request being served, set by api.observability for the request's lifetime.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

QUIET = ("alembic.runtime.plugins", "pgserver", "httpx")


class JsonLines(logging.Formatter):
    """One JSON object per line. An access line's fields come in `extra={"fields": ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextLines(logging.Formatter):
    """Readable lines for local work: the same fields, as `name=value` after the message."""

    def format(self, record: logging.LogRecord) -> str:
        words = [self.formatTime(record), record.levelname, record.name]
        words += [f"[{getattr(record, 'request_id', None) or '-'}]", record.getMessage()]
        words += [f"{name}={value}" for name, value in getattr(record, "fields", {}).items()]
        line = " ".join(words)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _with_request_id(record: logging.LogRecord) -> bool:
    record.request_id = REQUEST_ID.get()
    return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring again replaces it and leaves any other handler alone."""


def configure(log_format: LogFormat = "json", stream: TextIO | None = None) -> None:
    """Every logger's lines, uvicorn's included, to `stream` (stdout) in `log_format`."""
    handler = _Handler(stream or sys.stdout)
    handler.setFormatter(JsonLines() if log_format == "json" else TextLines())
    handler.addFilter(_with_request_id)
    root = logging.getLogger()
    for old in [handler for handler in root.handlers if isinstance(handler, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Attributes no line of ours shows; each costs a lookup per line (the logging HOWTO's
    # "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
