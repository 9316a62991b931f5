"""The clock the daemon's parts read, injected so each part can be tested on a fake one.

:data:`SYSTEM` is the real one. Wall time (``time_ns``) stamps rows and decides
what is due; ``monotonic`` measures waits that must not jump with the wall clock.
Scheduling on the event loop (sleeps, ``call_later``) keeps the loop's own clock.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time_ns(self) -> int:
        """Wall-clock time in nanoseconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...


class SystemClock:
    """The machine's clocks: :func:`time.time_ns` and :func:`time.monotonic`."""

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM: Clock = SystemClock()
