"""What peered routers send each other: rows fitted to a message, silences both ways,
the answer's envelope (pure; :mod:`knotify.peers.service` uses them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from knotify.alerts.silence import parse_matchers
from knotify.errors import SilenceError
from knotify.event import encode
from knotify.store.silences import SilenceRow
from knotify.wire import WIRE_VERSION

T = TypeVar("T")


def fit(rows: list[tuple[int, T]], wire: Callable[[T], dict[str, Any]], upto: int,
         budget: int) -> tuple[list[dict[str, Any]], int]:
    """As many of ``rows`` (in change order) as fit in ``budget`` bytes of JSON (one at
    least, so one large row cannot stall replication), and the last change sent."""
    out: list[dict[str, Any]] = []
    used = 0
    for changed, row in rows:
        data = wire(row)
        size = len(encode(data))
        if out and used + size > budget:
            return out, changed - 1
        out.append(data)
        used += size
    return out, upto


def silence_wire(row: SilenceRow) -> dict[str, Any]:
    return {"uid": row.uid, "matchers": row.matchers, "starts_ns": row.starts_ns,
            "ends_ns": row.ends_ns, "created_ns": row.created_ns, "by": row.by,
            "reason": row.reason, "expired_ns": row.expired_ns}


def silence_row(data: Any) -> SilenceRow:
    """A silence a peer sent; ValueError says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("a silence must be an object")
    uid, matchers = data.get("uid"), data.get("matchers")
    if not isinstance(uid, str) or not 0 < len(uid) <= 64:
        raise ValueError("silence 'uid' must be a string")
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        raise ValueError("silence 'matchers' must be a list of strings")
    try:
        texts = [m.text for m in parse_matchers(matchers)]
    except SilenceError as exc:
        raise ValueError(str(exc)) from None
    times = {k: data.get(k) for k in ("starts_ns", "ends_ns", "created_ns")}
    for key, value in times.items():
        if type(value) is not int or not 0 <= value < 2**63:
            raise ValueError(f"silence {key!r} must be a time in ns")
    expired = data.get("expired_ns")
    if expired is not None and (type(expired) is not int or not 0 <= expired < 2**63):
        raise ValueError("silence 'expired_ns' must be a time in ns or null")
    by, reason = data.get("by", ""), data.get("reason", "")
    if not isinstance(by, str) or not isinstance(reason, str):
        raise ValueError("silence 'by' and 'reason' must be strings")
    return SilenceRow(0, texts, int(data["starts_ns"]), int(data["ends_ns"]),
                      int(data["created_ns"]), by[:200], reason[:1000], expired, uid)


def decode_message_reply(payload: bytes) -> dict[str, Any]:
    """A peer's answer: a versioned JSON object (ValueError otherwise)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != WIRE_VERSION:
        raise ValueError("not a version 1 answer")
    return data
