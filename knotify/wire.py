"""The wire's two fixed forms, shared by both ends: its version and the ack of one event.

A leaf on the hook's path: it imports nothing. The router makes acks with :func:`ack`
and every client recognises them with :func:`is_ack`, so the byte form lives here once.
"""

from __future__ import annotations

#: The version every message and every stamped event carries as ``"v"``.
WIRE_VERSION = 1

_ACK_HEAD = b'{"v":%d,"ok":true,"id":"' % WIRE_VERSION


def ack(ident: str) -> bytes:
    """The router's answer to an ``event`` message it journaled: the event's id, ok.

    Built from bytes, not a dict, because there is one per event; ``ident`` is an id the
    router's decoder accepted, so nothing in it needs escaping.
    """
    return _ACK_HEAD + ident.encode() + b'"}'


def is_ack(reply: bytes, ident: str) -> bool:
    """Whether ``reply`` acks the event ``ident`` (anything else, a refusal included, is not)."""
    return reply == ack(ident)
