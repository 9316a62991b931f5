"""The ``heartbeat`` wire op: a sending host saying "I am here" without an event.

Heartbeats update when the router last heard from a host; they are not events, so
they are never journaled (they would flood the history). Decoding is as strict as
for events: an unknown field or a wrong type is refused with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from knotify import keepalived
from knotify.errors import WireError
from knotify.wire import WIRE_VERSION

OP = "heartbeat"

_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "v": (int, True),
    "op": (str, True),
    "host": (str, True),
    "ts_ns": (int, False),
    "interval_s": ((int, float), False),
    "spool": (int, False),
    "version": (str, False),
}


@dataclass(slots=True, frozen=True)
class Heartbeat:
    host: str
    ts_ns: int
    interval_s: float | None = None
    #: Events waiting in the sender's spool (all of its outboxes).
    spool: int | None = None
    version: str = ""


def encode(host: str, interval_s: float, spool: int | None, version: str) -> dict[str, Any]:
    data: dict[str, Any] = {"v": WIRE_VERSION, "op": OP, "host": host, "ts_ns": time.time_ns(),
                            "interval_s": interval_s, "version": version}
    if spool is not None:
        data["spool"] = spool
    return data


def decode(msg: dict[str, Any]) -> Heartbeat:
    """A Heartbeat from a decoded message (see :func:`knotify.event.decode_message`)."""
    unknown = sorted(set(msg) - set(_FIELDS))
    if unknown:
        raise WireError(f"heartbeat has unknown field(s): {', '.join(map(repr, unknown))}")
    for name, (types, required) in _FIELDS.items():
        if name not in msg:
            if required:
                raise WireError(f"heartbeat is missing the field {name!r}")
            continue
        value = msg[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise WireError(f"heartbeat field {name!r} has the wrong type "
                            f"({type(value).__name__})")
    host = keepalived.safe_text(msg["host"])
    if not 1 <= len(host) <= 255 or any(c in host for c in "\n\r\0"):
        raise WireError("heartbeat host must be 1..255 characters without newlines")
    ts_ns = msg.get("ts_ns", 0)
    if not 0 <= ts_ns < 2**63:
        raise WireError("heartbeat ts_ns must be in 0..2^63")
    interval = msg.get("interval_s")
    if interval is not None and not 0 < interval <= 86400:
        raise WireError("heartbeat interval_s must be more than 0 and at most 86400")
    spool = msg.get("spool")
    if spool is not None and not 0 <= spool < 2**63:
        raise WireError("heartbeat spool must be a count of 0 or more")
    version = msg.get("version", "")
    if len(version) > 64:
        raise WireError("heartbeat version is longer than 64 characters")
    return Heartbeat(host=host, ts_ns=ts_ns,
                     interval_s=float(interval) if interval is not None else None,
                     spool=spool, version=keepalived.safe_text(version))
