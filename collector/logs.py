"""Structured logging: stable dotted event names with fields, one JSON object per line (or plain text)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Callable

__all__ = ["configure_logging", "ThrottledLog", "MAX_FIELD_CHARS"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
MAX_FIELD_CHARS = 2048   # a field quoting a producer's value (an error, a reason) is cut to this


def _capped(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return f"{value[:MAX_FIELD_CHARS]}…[truncated {len(value) - MAX_FIELD_CHARS} chars]"
    return value


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: _capped(v) for k, v in record.__dict__.items() if k not in _STANDARD}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _capped(record.getMessage()),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} " \
               f"{record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _RepeatFilter(logging.Filter):
    """Mute a warning repeated within 10 s (same event and logger); overload can produce thousands."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "throttled", False):
            return True
        if record.levelno < logging.WARNING and record.msg not in ("export.refused",):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < 10.0:
            return False
        self._last[key] = now
        return True


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_RepeatFilter())
    root = logging.getLogger("callscope")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class ThrottledLog:
    """One log line per ``interval_s`` at most for a recurring event, carrying how many times it happened.

    Used where one bad client can repeat an event thousands of times a second (a rejected span, a mapper
    crash): the line says ``count`` (occurrences since the previous line, the muted ones included) so muting
    never hides how many. The metric counters have the exact totals.
    """

    def __init__(self, logger: logging.Logger, event: str, *, level: int = logging.WARNING,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger, self._event, self._level, self._interval = logger, event, level, interval_s
        self._clock = clock
        self._last = -1e18
        self._pending = 0

    def add(self, count: int = 1, **fields: object) -> None:
        self._pending += count
        now = self._clock()
        if now - self._last < self._interval:
            return
        self._last = now
        fields["count"], self._pending = self._pending, 0
        # Not muted by the repeat filter: this class does the muting, and says how much it muted.
        self._logger.log(self._level, self._event, extra={**fields, "throttled": True})
