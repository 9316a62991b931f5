"""``stats``: the router's figures (what ``status`` shows under "router")."""

from __future__ import annotations

from typing import Any

from knotify.ops.base import Answer, Op, OpContext


def execute(ctx: OpContext, msg: dict[str, Any]) -> Answer:
    return {"router": ctx.info()}


OPS = (Op("stats", execute),)
