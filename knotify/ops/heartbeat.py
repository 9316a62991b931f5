"""``heartbeat``: a sending host saying "I am here" (see :mod:`knotify.cluster.heartbeat`
for the message; the router checks beforehand that the sender may speak for the host)."""

from __future__ import annotations

from typing import Any

from knotify.ops.base import Answer, Op, OpContext, unknown
from knotify.vocab import ANY_SENDER


def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    if ctx.cluster is None:
        raise unknown(msg["op"])
    return ctx.cluster.heartbeat(msg)


OPS = (Op("heartbeat", execute, access=ANY_SENDER),)
