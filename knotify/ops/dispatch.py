"""Answering one op message: find it in the registry, run it, turn what went wrong into
an answer.

This is a boundary: whatever an op raises becomes an error answer to its sender and the
router serves on. A request that cannot be served (WireError: unknown op, a bad field) is
handed to ``rejected`` (the router counts and logs it); anything else is a bug, counted
and logged once by the router's faults under ``command``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from knotify.errors import WireError
from knotify.event import reply
from knotify.ops.base import Op, OpContext, unknown


class Dispatcher:
    def __init__(self, ops: Mapping[str, Op]) -> None:
        self.ops = ops

    def answer(self, ctx: OpContext, msg: dict[str, Any],
               rejected: Callable[[str], object]) -> bytes:
        """The reply to ``msg`` (a decoded message whose ``op`` is a string); never raises
        for what the op does."""
        op: str = msg["op"]
        try:
            found = self.ops.get(op)
            if found is None:
                raise unknown(op)
            out = found.execute(ctx, msg)
            return out if isinstance(out, bytes) else reply(True, **out)
        except WireError as exc:
            rejected(str(exc))
            return reply(False, error=str(exc))
        except Exception as exc:  # a bug: this request fails, the router serves on
            reason = ctx.faults.record("command", exc, op=op[:40])
            return reply(False, error=f"internal error: {reason}")
