"""structlog set-up: JSON lines when not on a terminal, readable console output on one.

The router writes a line or two per event, thousands of events a second, so the JSON
path is kept cheap: one processor stamps level and time (the time string is cached per
second), orjson renders, and :class:`LineSink` writes the lines of one event-loop turn
with one ``write`` instead of a write and a flush per line.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
#: structlog method name -> the "level" written (as structlog's add_log_level names them).
_LEVEL_NAMES = {"warn": "warning", "exception": "error", "fatal": "critical", "msg": "info"}
#: Lines buffered beyond this are written at once.
FLUSH_BYTES = 64 * 1024


def _dumps(obj: Any, **_: Any) -> bytes:
    """orjson (the router writes a line or two per event); json for lone surrogates."""
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:
        return json.dumps(obj, default=str).encode()


_second = -1
_second_text = ""


def stamp(_logger: Any, method: str, event_dict: MutableMapping[str, Any]
          ) -> MutableMapping[str, Any]:
    """Add ``level`` and an ISO 8601 UTC ``timestamp`` with microseconds."""
    global _second, _second_text
    event_dict["level"] = _LEVEL_NAMES.get(method, method)
    now = time.time()
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event_dict["timestamp"] = f"{_second_text}.{int((now - second) * 1e6):06d}Z"
    return event_dict


class LineSink:
    """Where rendered JSON lines go: one write per event-loop turn.

    Inside a running asyncio loop, debug and info lines are collected and written when
    the current loop turn ends (or at :data:`FLUSH_BYTES`); warnings and worse, and
    lines logged outside a loop, are written at once. Everything still buffered is
    written at exit. A router killed with SIGKILL loses at most the lines of the turn
    it was in; what they said is in the journal (a log action's outcome is committed in
    a later turn than its line is written).
    """

    def __init__(self, stream: BinaryIO, level: int = logging.INFO) -> None:
        self.stream = stream
        #: The configured level, for :func:`emit` (structlog's filtering is per class).
        self.level = level
        self._lines: list[bytes] = []
        self._size = 0
        self._scheduled = False
        atexit.register(self.flush)

    def msg(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def urgent(self, line: bytes) -> None:
        self._lines.append(line)
        self.flush()

    debug = info = msg
    warning = warn = error = err = critical = fatal = exception = failure = urgent

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        self._size = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the log went away (closed pipe, full disk): keep running


def setup(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process. ``fmt`` is auto, json or console."""
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    binary = not console and hasattr(out, "buffer")
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if console
                     else structlog.processors.JSONRenderer(serializer=_dumps) if binary
                     else structlog.processors.JSONRenderer(sort_keys=False))
    factory: Any
    if binary:
        sink = LineSink(out.buffer, LEVELS[level])
        factory = lambda *_args: sink  # noqa: E731 - one sink for every logger
    else:
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=[stamp, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def get(**bind: Any) -> Any:
    return structlog.get_logger("knotify").bind(**bind)


_LEVEL_NUMBERS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                  "error": logging.ERROR, "critical": logging.CRITICAL}


def enabled(log: Any, level: str) -> bool:
    """Whether ``log`` writes lines of ``level`` (to skip building what it would drop)."""
    sink = getattr(log, "_logger", None)
    if isinstance(sink, LineSink):
        return _LEVEL_NUMBERS[level] >= sink.level
    return True  # console or a caller's own logger: let it decide


def emit(log: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    """``log.<level>(event, **fields)`` for lines written per event.

    With JSON output the line is rendered here, without structlog's method dispatch and
    processor chain: the same keys in the same order (bound context, fields, event,
    level, timestamp), a third of the cost. Otherwise structlog renders it.
    """
    sink = getattr(log, "_logger", None)
    if not isinstance(sink, LineSink):
        getattr(log, level)(event, **fields)
        return
    if _LEVEL_NUMBERS[level] < sink.level:
        return
    context = log._context
    line = {**context, **fields, "event": event} if context else {**fields, "event": event}
    stamp(None, level, line)
    if level in ("debug", "info"):
        sink.msg(_dumps(line))
    else:
        sink.urgent(_dumps(line))
