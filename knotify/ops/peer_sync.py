"""``peer_sync``: a peer router's notification log and silences in, ours out ([peers])."""

from __future__ import annotations

from typing import Any

from knotify.ops.base import Answer, Op, OpContext, unknown


def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    if ctx.peers is None:
        raise unknown(msg["op"])
    return ctx.peers.command(msg["op"], msg)


OPS = (Op("peer_sync", execute),)
