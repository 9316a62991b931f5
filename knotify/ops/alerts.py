"""``alerts``: the alert engine's figures (workers, outcomes, outbox counts)."""

from __future__ import annotations

from typing import Any

from knotify.ops.base import Answer, Op, OpContext, unknown


def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    if ctx.alerts is None:
        raise unknown(msg["op"])
    return ctx.alerts.command(msg["op"], msg)


OPS = (Op("alerts", execute),)
