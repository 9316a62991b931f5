"""A clock a test moves by hand (:class:`knotify.clock.Clock`): wall and monotonic time
advance together, only when the test says so."""

from __future__ import annotations

#: 2023-11-14 22:13:20 UTC: far from the machine's own time, so a value read from the
#: real clock would show.
START_NS = 1_700_000_000 * 10**9


class FakeClock:
    def __init__(self, start_ns: int = START_NS) -> None:
        self.ns = start_ns
        self.mono = 1000.0

    def time_ns(self) -> int:
        return self.ns

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)
        self.mono += seconds
