"""What alerting remembers per stream and key, between events.

A stream is one alert action (``rule#index``); its key is the event's
(host, kind, name, vs). The flap and repeat stages read and update this plain
record; :mod:`knotify.store.outbox` keeps it in the journal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Stream:
    #: The state and key epoch of the last alert queued, and when it was queued.
    alerted_state: str | None = None
    alerted_epoch: int | None = None
    last_ns: int | None = None
    #: Monit-style flap control: set while the key changes too often.
    flapping: bool = False
    flap_since_ns: int | None = None
    suppressed: int = 0
