"""Repeat suppression and ``repeat_interval``, Alertmanager-style.

An alert for a key that is still in the state and epoch it was last alerted
for (keepalived reporting FAULT again, a rule on ``every``) is suppressed. A key
that stays in a bad state (FAULT, RS DOWN, ...) is alerted again every
``interval`` until it leaves it. Pure decisions over plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

from knotify.alerts.render import BAD_STATES
from knotify.alerts.stream import Stream

FIRE = "fire"
REPEAT = "repeat"
SUPPRESS = "suppress"


@dataclass(slots=True, frozen=True)
class RepeatPolicy:
    interval_s: float = 4 * 3600.0
    states: frozenset[str] = BAD_STATES


def on_event(stream: Stream, state: str, epoch: int, now_ns: int, policy: RepeatPolicy) -> str:
    """FIRE (something new), SUPPRESS (said already) or REPEAT (said, but long ago)."""
    if (stream.last_ns is None or stream.alerted_state != state
            or stream.alerted_epoch != epoch):
        return FIRE
    if (policy.interval_s > 0 and state in policy.states
            and now_ns - stream.last_ns >= policy.interval_s * 1e9):
        return REPEAT
    return SUPPRESS


def due(stream: Stream, state: str, epoch: int, policy: RepeatPolicy) -> int | None:
    """When the next repeat of a key that stays bad is due (ns), or None if none is."""
    if (stream.flapping or policy.interval_s <= 0 or stream.last_ns is None
            or stream.alerted_state is None or stream.alerted_state not in policy.states
            or stream.alerted_state != state or stream.alerted_epoch != epoch):
        return None
    return stream.last_ns + int(policy.interval_s * 1e9)


def queued(stream: Stream, state: str, epoch: int, now_ns: int) -> None:
    """Remember that an alert for ``state`` went out now."""
    stream.alerted_state = state
    stream.alerted_epoch = epoch
    stream.last_ns = now_ns
