"""A keepalived notify FIFO read inside the router, and the resync after each (re)open.

Each line is stamped like a hook's event (host, per-host sequence, clocks) and goes in
through the :class:`~knotify.sources.Inlet`. With ``resync = true``, every (re)open of
the FIFO asks keepalived for its instance states (:mod:`knotify.resync`), after handing
on what waited in the FIFO, so that the snapshot is ordered after the lines it follows;
the lines read while the dump is made keep their instances out of it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from knotify import resync, spool
from knotify.errors import ResyncError
from knotify.fifo import RESYNC_DELAY, TURN, AsyncFifoReader, event_from_line
from knotify.stamp import new_id
from knotify.vocab import INVALID
from knotify.wire import WIRE_VERSION

if TYPE_CHECKING:
    from knotify.config import FifoSource as FifoSettings
    from knotify.sources.base import Inlet
    from knotify.supervisor import Faults


class FifoSource:
    """One ``[[router.fifos]]`` entry: its reader, and its resyncs."""

    def __init__(self, settings: FifoSettings, host: str, spool_dir: str, inlet: Inlet,
                 faults: Faults, log: Any, resync_lock: asyncio.Lock) -> None:
        self.settings = settings
        self.name = f"fifo {settings.path}"
        self.host = host
        self.spool_dir = spool_dir
        self.inlet = inlet
        self.faults = faults
        self.log = log
        #: One JSON dump file per host: one request to keepalived at a time.
        self.resync_lock = resync_lock
        self.reader = AsyncFifoReader(settings.path, spool_dir, self.lines, log,
                                      self._schedule_resync if settings.resync else None)
        self._tasks: list[asyncio.Task[None]] = []

    def quiet(self) -> float:
        return TURN

    async def run(self, beat: Callable[[], None]) -> None:
        self.reader.beat = beat
        try:
            await self.reader.run()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def lines(self, lines: list[tuple[str, int, int]]) -> None:
        """(line, ts_ns, boot clock ns) as read, in order: stamped, then in."""
        host = self.host
        try:
            wire = [event_from_line(line, host, spool.next_seq(self.spool_dir), ts, mono)
                    for line, ts, mono in lines]
        except Exception as exc:  # the lines are kept raw, as INVALID events
            self.faults.record("fifo", exc, lines=len(lines))
            wire = [{"v": WIRE_VERSION, "id": new_id(), "host": host, "source": "fifo",
                     "kind": INVALID, "state": INVALID, "name": "", "ts_ns": ts,
                     "raw": line[:4096]} for line, ts, _ in lines]
            self.inlet.spool(wire, "fifo")
            return
        self.inlet.deliver(wire, "fifo")

    def _schedule_resync(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(self._resync()))

    async def _resync(self) -> None:
        try:
            await self.resync_once()
        except Exception as exc:  # one resync failing is logged; the FIFO reads on
            self.faults.record("resync", exc, fifo=self.settings.path)

    async def resync_once(self) -> None:
        """After the FIFO (re)opens: read what waited in it, then ask keepalived for its
        states."""
        await asyncio.sleep(RESYNC_DELAY)
        s = self.settings
        log = self.log.bind(fifo=s.path)
        async with self.resync_lock:
            # Lines keepalived wrote before its dump are older than the snapshot: hand
            # them on first, or a late read would be ordered after (and undo) it.
            self.reader.drain()
            mark = self.reader.mark()
            try:
                pid = resync.read_pidfile(s.pidfile)
                instances = await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(resync.snapshot, pid, s.json_file))
            except ResyncError as exc:
                log.warning("resync.failed", error=str(exc))
                return
        self.reader.drain()
        window = self.reader.lines_since(mark)
        if window is None:
            log.info("resync.skipped", reason="the FIFO closed or reopened meanwhile (a new "
                     "resync follows its reopening)")
            return
        # A line read while the dump was made may be newer than the dump: the FIFO's
        # ordered word wins for its instance (and a stopping keepalived's dump lies).
        overtaken = resync.overtaken(window, self.reader.lines_this_open())
        instances = [inst for inst in instances if inst["name"] not in overtaken]
        wire = resync.wire_events(instances, self.host, lambda: spool.next_seq(self.spool_dir))
        self.inlet.deliver(wire, "resync")
        log.info("resync.done", instances=len(instances), host=self.host)
