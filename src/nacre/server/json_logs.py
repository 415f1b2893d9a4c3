"""Structured logs: one JSON object per line, and :func:`log_event`, the way the server logs.

Several lines go out per KBS handshake, so both halves are on the request path: the formatter
renders with orjson (the json module only for what orjson refuses: integers over 64 bits) and
formats the time from a per-second cache; :func:`log_event` builds its record without
``Logger.log``'s walk up the stack. Records still go through :mod:`logging` (levels, filters,
handlers, pytest's ``caplog``), so nothing else about logging changes.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = ["LOGGER_NAME", "JsonLogFormatter", "log_event"]

LOGGER_NAME: Final = "nacre.server"
_log = logging.getLogger(LOGGER_NAME)
#: Attributes every LogRecord has: the rest of a record's attributes are the event's fields.
_STANDARD_ATTRS: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extra fields."""

    def __init__(self) -> None:
        super().__init__()
        #: (second, its text): one tuple, replaced whole, so threads never see half an update.
        self._cached: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        """``created`` in ISO 8601 with microseconds and ``+00:00``, as ``datetime.isoformat``
        writes it; the part up to the second is computed once per second."""
        moment = datetime.fromtimestamp(created, UTC)
        # The second ``moment`` shows (``created`` may round up into the next one).
        second = round(created - moment.microsecond * 1e-6)
        cached_second, prefix = self._cached
        if cached_second != second:
            prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._cached = (second, prefix)
        if moment.microsecond:
            return f"{prefix}.{moment.microsecond:06d}+00:00"
        return f"{prefix}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and name[:1] != "_":
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(out, default=str).decode("utf-8")
        except (orjson.JSONEncodeError, TypeError):
            return json.dumps(out, default=str, separators=(",", ":"))


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event. Callers pass identifiers and outcomes only, never secrets.

    What ``Logger.log`` does, without its walk up the stack for the caller's file and line
    (which would always name this function): several events per KBS handshake take this path.
    """
    if not _log.isEnabledFor(level):
        return
    record = _log.makeRecord(
        _log.name, level, __file__, 0, event, (), None, "log_event", {"event": event, **fields}
    )
    _log.handle(record)
