"""``ping``: is the router there, which version, since when (any sender may ask)."""

from __future__ import annotations

import os
import time
from typing import Any

from knotify import __version__
from knotify.ops.base import Answer, Op, OpContext
from knotify.vocab import ANY_SENDER


def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    return {"version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - ctx.started, 3)}


OPS = (Op("ping", execute, access=ANY_SENDER),)
