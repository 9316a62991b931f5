"""The spool as an input source: what hooks (and the FIFO reader) could not hand over.

Every ``spool_interval`` the spool is replayed in order (:class:`knotify.replay.
SpoolReplay`, which treats every file as hostile); files are removed only once their
events are committed. While the intake sheds load (too many actions waiting) the spool is
the buffer: it is looked at more often, and intake resumes only once it is empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from knotify import spool

if TYPE_CHECKING:
    from knotify.intake import Intake
    from knotify.replay import SpoolReplay
    from knotify.supervisor import Faults

#: How often the spool is looked at while shedding.
SHED_INTERVAL = 0.05


class SpoolSource:
    """Replays the spool into the intake, in order, without outrunning the actions."""

    name = "spool"

    def __init__(self, replay: SpoolReplay, intake: Intake, interval: float,
                 faults: Faults, log: Any) -> None:
        self.replay = replay
        self.intake = intake
        self.interval = interval
        self.faults = faults
        self.log = log

    def apply(self, interval: float) -> None:
        """A reload's ``[router] spool_interval``."""
        self.interval = interval

    def quiet(self) -> float:
        return self.interval

    def replay_now(self) -> int:
        """Journal what the hooks spooled; files are removed only after the commit.

        Every file is hostile input (:mod:`knotify.replay`): a bad one is set aside with
        one log line and never blocks, stops or holds back the rest; this never raises.
        """
        intake = self.intake

        def busy() -> bool:
            if intake.executor.queued > intake.settings.max_backlog:
                intake.overloaded()  # the rest waits where it is, in order
                return True
            return False

        return self.replay.run(busy)

    async def run(self, beat: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(SHED_INTERVAL if self.intake.shedding else self.interval)
            beat()
            try:
                self.turn()
            except Exception as exc:  # one bad turn; the next one tries again
                self.faults.record("spool", exc)

    def turn(self) -> None:
        intake = self.intake
        queued = intake.executor.queued
        if intake.shedding and queued > intake.settings.max_backlog // 5:
            return  # replaying now would only grow the backlog again
        try:
            count = self.replay_now()
        except OSError as exc:
            self.log.warning("spool.scan_failed", error=str(exc))
            return
        if count:
            self.log.info("spool.replayed", events=count)
        if intake.shedding and not spool.pending(self.replay.spool_dir, limit=1):
            intake.shedding = False
            self.log.info("intake.resumed", actions_queued=queued)
