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
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

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
    """Where rendered lines go: one write per event-loop turn.

    Inside a running asyncio loop, debug and info lines are collected and written when
    the current loop turn ends (or at :data:`FLUSH_BYTES`); warnings and worse, and
    lines logged outside a loop, are written at once. Everything still buffered is
    written at exit. A router killed with SIGKILL loses at most the lines of the turn
    it was in. Lines logged under :func:`held` are written only if that block succeeds.
    """

    def __init__(self, write: Callable[[bytes | bytearray], None], level: int = logging.INFO,
                 json_lines: bool = True) -> None:
        self._write = write
        #: The configured level, for :func:`emit` (structlog's filtering is per class).
        self.level = level
        #: Lines are JSON (so :func:`emit` may render them itself).
        self.json = json_lines
        # One growing buffer, not a list of lines: the held lines of a batch (a megabyte
        # at full intake) as small objects left the allocator's arenas fragmented.
        self._buf = bytearray()
        self._scheduled = False
        self._held = 0
        atexit.register(self.flush)

    def msg(self, line: bytes | str) -> None:
        data = line.encode("utf-8", "backslashreplace") if isinstance(line, str) else line
        self._buf += data
        self._buf += b"\n"
        if not self._held:
            self._soon()

    def _soon(self) -> None:
        """Write at the end of this loop turn (now if outside a loop or over the limit)."""
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def urgent(self, line: bytes | str) -> None:
        self.msg(line)
        if not self._held:
            self.flush()

    debug = info = msg
    warning = warn = error = err = critical = fatal = exception = failure = urgent

    def hold(self) -> int:
        """Write nothing until :meth:`release`; returns where the held lines start."""
        self._held += 1
        return len(self._buf)

    def release(self, discard_from: int | None = None) -> None:
        """End a hold; ``discard_from``: drop the lines logged since that mark first."""
        if discard_from is not None:
            del self._buf[discard_from:]
        self._held -= 1
        if not self._held and self._buf:
            self._soon()

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf or self._held:
            return
        data, self._buf = self._buf, bytearray()
        try:
            self._write(data)
        except (OSError, ValueError):
            pass  # the log went away (closed pipe, full disk): keep running


def _writer(out: TextIO) -> Callable[[bytes | bytearray], None]:
    """Write bytes to ``out``'s binary side if it has one, else as text; then flush."""
    buffer = getattr(out, "buffer", None)

    def write(data: bytes | bytearray) -> None:
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            out.write(data.decode("utf-8", "replace"))
            out.flush()

    return write


def setup(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process. ``fmt`` is auto, json or console."""
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if console
                     else structlog.processors.JSONRenderer(serializer=_dumps))
    sink = LineSink(_writer(out), LEVELS[level], json_lines=not console)
    structlog.configure(
        processors=[stamp, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_args: sink,  # one sink for every logger
        cache_logger_on_first_use=False,
    )


@contextmanager
def held(log: Any) -> Iterator[None]:
    """Lines logged inside the block are written after it, and dropped if it raises.

    The router journals a batch of events under this: what it logs about them (and a
    log action's line) reaches the log only once they are committed.
    """
    sink = getattr(log, "_logger", None)
    if not isinstance(sink, LineSink):
        yield
        return
    mark = sink.hold()
    try:
        yield
    except BaseException:
        sink.release(discard_from=mark)
        raise
    sink.release()


def get(**bind: Any) -> Any:
    return structlog.get_logger("knotify").bind(**bind)


#: Every level a line may be emitted at (``[log] level`` offers the first four).
_LEVEL_NUMBERS = {**LEVELS, "critical": logging.CRITICAL}


def enabled(log: Any, level: str) -> bool:
    """Whether ``log`` writes lines of ``level`` (to skip building what it would drop)."""
    sink = getattr(log, "_logger", None)
    if isinstance(sink, LineSink):
        return _LEVEL_NUMBERS[level] >= sink.level
    return True  # a caller's own logger: let it decide


def emit(log: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    """``log.<level>(event, **fields)`` for lines written per event (``fields`` is
    handed over: it may get the line's own keys).

    With JSON output the line is rendered here, without structlog's method dispatch and
    processor chain: the same keys in the same order (bound context, fields, event,
    level, timestamp), a third of the cost. Otherwise structlog renders it.
    """
    sink = getattr(log, "_logger", None)
    if not isinstance(sink, LineSink) or not sink.json:
        getattr(log, level)(event, **fields)
        return
    if _LEVEL_NUMBERS[level] < sink.level:
        return
    context = log._context
    if context:
        line = {**context, **fields, "event": event}
    else:  # the caller's dict, which it hands over
        line = fields
        line["event"] = event
    stamp(None, level, line)
    if level in ("debug", "info"):
        sink.msg(_dumps(line))
    else:
        sink.urgent(_dumps(line))
