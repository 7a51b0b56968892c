"""Process logging: the classic text lines, or one JSON object per line.

JSON lines carry ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; then
``correlation_id`` when the record has one (INTERNAL errors log the id they return to the
client), ``trace_id`` and ``span_id`` when a span is current, any other ``extra`` fields, and
``exception`` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any, Literal

from edgefabric.telemetry import tracing

__all__ = ["LOG_FORMATS", "LOG_FORMAT_ENV", "JsonFormatter", "configure_logging"]

LOG_FORMAT_ENV = "EDGEFABRIC_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if "trace_id" not in entry and (ids := tracing.current_ids()) is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str | None = None) -> None:
    """Set up the root logger once per process; ``log_format`` falls back to
    ``$EDGEFABRIC_LOG_FORMAT``, then ``text``. ``ValueError`` names a bad format or level."""
    chosen = (log_format or os.environ.get(LOG_FORMAT_ENV) or "text").lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(
            f"log format {chosen!r} is not one of {', '.join(LOG_FORMATS)} "
            f"(from --log-format or ${LOG_FORMAT_ENV})"
        )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
