"""Flap control (Monit-style): too many changes become one alert, then quiet, then one "stable".

More than ``threshold`` transitions of one key within ``window`` start a flap:
one "flapping" alert goes out and later alerts of that stream are suppressed
(journaled as such). Once the key has kept one state for ``stable``, one
"stable again" alert ends the flap. Pure decisions over plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

from knotify.alerts.stream import Stream

NONE = "none"
START = "start"
SUPPRESS = "suppress"


@dataclass(slots=True, frozen=True)
class FlapPolicy:
    threshold: int = 5
    window_s: float = 120.0
    stable_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0 and self.window_s > 0


def on_event(stream: Stream, is_transition: bool, transitions_in_window: int,
             policy: FlapPolicy) -> str:
    """START a flap, SUPPRESS the alert (flap under way) or NONE (alert as usual).

    ``transitions_in_window`` counts this key's transitions in the window that
    ends with this event, this event included.
    """
    if stream.flapping:
        return SUPPRESS
    if policy.enabled and is_transition and transitions_in_window > policy.threshold:
        return START
    return NONE


def start(stream: Stream, now_ns: int) -> None:
    stream.flapping = True
    stream.flap_since_ns = now_ns
    stream.suppressed = 0


def stable_due(stream: Stream, key_since_ns: int, now_ns: int, policy: FlapPolicy) -> int | None:
    """When the flap of ``stream`` ends (ns), given the key's last change; None if not flapping."""
    if not stream.flapping:
        return None
    return max(key_since_ns, stream.flap_since_ns or 0) + int(policy.stable_s * 1e9)


def end(stream: Stream) -> int:
    """Clear the flap; returns how many alerts it suppressed."""
    suppressed = stream.suppressed
    stream.flapping = False
    stream.flap_since_ns = None
    stream.suppressed = 0
    return suppressed
