"""structlog set-up: JSON lines when not on a terminal, readable console output on one."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def _dumps(obj: Any, **_: Any) -> bytes:
    """orjson (the router writes a line or two per event); json for lone surrogates."""
    try:
        return orjson.dumps(obj, default=str)
    except TypeError:
        return json.dumps(obj, default=str).encode()


def setup(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process. ``fmt`` is auto, json or console."""
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    binary = not console and hasattr(out, "buffer")
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if console
                     else structlog.processors.JSONRenderer(serializer=_dumps) if binary
                     else structlog.processors.JSONRenderer(sort_keys=False))
    factory: Any = (structlog.BytesLoggerFactory(out.buffer) if binary
                    else structlog.PrintLoggerFactory(out))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def get(**bind: Any) -> Any:
    return structlog.get_logger("knotify").bind(**bind)
