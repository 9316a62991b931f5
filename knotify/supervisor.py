"""Keeping the router's background work alive, and showing that it is.

Two things every long-lived daemon needs at its boundaries:

* :class:`Faults`: an unexpected exception at a boundary (one message, one batch, one
  connection, one turn of a loop) is counted by where it happened and logged once with
  its reason and traceback; the same fault again within :data:`LOG_EVERY` seconds is
  only counted (and the count said on the next line), so a hostile stream cannot flood
  the log.
* :class:`Supervisor`: every background task of the router runs under it. A task that
  raises (or returns, which a loop never should) is logged loudly, counted and started
  again after a short backoff; one that keeps dying (:data:`MAX_CRASHES` within
  :data:`CRASH_WINDOW`) makes the router stop with an error, so that systemd restarts
  it. Loops say when they turn (:meth:`Supervisor.beat`); :meth:`Supervisor.stale`
  names those that have not turned for longer than they should, which holds back the
  systemd watchdog (see :mod:`knotify.sdnotify`) and shows in ``knotify status``.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from knotify import sdnotify

#: The same fault (where, exception type, place raised) is logged at most this often.
LOG_EVERY = 10.0
#: A task that dies this often within the window stops the router (systemd restarts it).
MAX_CRASHES = 5
CRASH_WINDOW = 60.0
#: The first restart waits this long, each next one twice as long (0.5, 1, 2, 4 s).
FIRST_BACKOFF = 0.5
#: A loop is stale once it has not turned for its own interval plus this.
GRACE = 10.0
MAX_SIGNATURES = 1000


class Faults:
    """Unexpected exceptions at the router's boundaries: counted by where, logged once."""

    def __init__(self, log: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._logged: dict[tuple[str, str], float] = {}
        self._quiet: Counter[tuple[str, str]] = Counter()

    def record(self, where: str, exc: BaseException, **fields: Any) -> str:
        """Count ``exc`` under ``where`` and log it (once per :data:`LOG_EVERY`).

        Returns the reason in a few words, for the peer's answer.
        """
        self.counts[where] += 1
        reason = f"{type(exc).__name__}: {exc}"[:300]
        tb = exc.__traceback__
        last = traceback.extract_tb(tb)[-1] if tb is not None else None
        place = f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}" if last else ""
        signature = (where, f"{type(exc).__name__}@{place}")
        now = self._clock()
        logged = self._logged.get(signature)
        if logged is not None and now - logged < LOG_EVERY:
            self._quiet[signature] += 1
            return reason
        if len(self._logged) >= MAX_SIGNATURES:
            self._logged.clear()
        self._logged[signature] = now
        repeated = self._quiet.pop(signature, 0)
        self.log.error("router.fault", where=where, reason=reason, at=place,
                       repeated_since_last_line=repeated or None,
                       traceback="".join(traceback.format_exception(exc))[-4000:]
                       if logged is None else None,
                       detail="caught at a boundary; the router serves on", **fields)
        return reason

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's exception handler: what it would print (a callback or a forgotten
        task that raised) is a fault of its own, logged in the router's format."""
        exc = context.get("exception")
        if isinstance(exc, BaseException):
            self.record("loop", exc, message=str(context.get("message", ""))[:200])
        else:
            self.counts["loop"] += 1
            self.log.error("router.fault", where="loop",
                           reason=str(context.get("message", ""))[:300])


class TaskEnded(RuntimeError):
    """A supervised loop returned, which a loop never should."""


@dataclass(slots=True)
class Loop:
    """One supervised task, and what ``knotify status`` shows of it."""

    name: str
    #: Longest expected gap between turns (seconds; a callable for a setting that a
    #: reload can change); None for a task that only wakes when something happens.
    quiet: float | Callable[[], float] | None
    started: float
    last_turn: float | None = None
    turns: int = 0
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    last_error: str = ""
    task: asyncio.Task[None] | None = None
    #: For a loop that waits for input: True while none waits (it is idle, not stuck).
    idle: Callable[[], bool] | None = None

    def interval(self) -> float | None:
        return self.quiet() if callable(self.quiet) else self.quiet


class Supervisor:
    def __init__(self, log: Any, faults: Faults, on_fatal: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.faults = faults
        self.on_fatal = on_fatal
        self._clock = clock
        self.loops: dict[str, Loop] = {}
        self._stopping = False
        self._watchdog_withheld = False

    # -- liveness ------------------------------------------------------------------------

    def beat(self, name: str) -> None:
        """``name`` has turned (done a round of its work, or looked and found none)."""
        loop = self.loops.get(name)
        if loop is not None:
            loop.last_turn = self._clock()
            loop.turns += 1

    def beater(self, name: str) -> Callable[[], None]:
        return lambda: self.beat(name)

    def stale(self) -> list[tuple[str, float]]:
        """(name, seconds since its last turn) of every loop that is overdue."""
        now = self._clock()
        out = []
        for loop in self.loops.values():
            interval = loop.interval()
            if interval is None:
                continue
            if loop.idle is not None and loop.task is not None and not loop.task.done():
                try:
                    if loop.idle():
                        loop.last_turn = now
                        continue
                except Exception as exc:
                    self.faults.record(loop.name, exc)
            since = now - (loop.last_turn if loop.last_turn is not None else loop.started)
            if since > interval + GRACE:
                out.append((loop.name, since))
        return out

    def view(self) -> dict[str, dict[str, Any]]:
        """Per loop: seconds since its last turn, turns, restarts, the last error."""
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for name, loop in self.loops.items():
            out[name] = {
                "last_turn_s": None if loop.last_turn is None
                else round(now - loop.last_turn, 3),
                "interval_s": loop.interval(),
                "turns": loop.turns,
                "restarts": loop.restarts,
                "running": loop.task is not None and not loop.task.done(),
                "last_error": loop.last_error or None,
            }
        return out

    # -- tasks -----------------------------------------------------------------------------

    def spawn(self, name: str, work: Callable[[], Awaitable[None]],
              quiet: float | Callable[[], float] | None = None,
              idle: Callable[[], bool] | None = None) -> None:
        """Run ``work()`` as task ``name``; start it again whenever it dies.

        ``quiet``: the longest the task should go without a turn (None: it only wakes
        when something happens); ``idle``: whether it has nothing to do right now.
        """
        loop = Loop(name, quiet, self._clock(), idle=idle)
        self.loops[name] = loop
        loop.task = asyncio.get_running_loop().create_task(self._keep(loop, work), name=name)

    def every(self, name: str, interval: float | Callable[[], float],
              tick: Callable[[], object]) -> None:
        """Call ``tick()`` every ``interval`` seconds as loop ``name``.

        Each call is a boundary of its own: an exception is a fault counted under the
        loop's name, and the loop goes on at its next turn.
        """
        def wait() -> float:
            return interval() if callable(interval) else interval

        async def run() -> None:
            while True:
                await asyncio.sleep(wait())
                self.beat(name)
                try:
                    tick()
                except Exception as exc:
                    self.loops[name].last_error = self.faults.record(name, exc)

        self.spawn(name, run, wait)

    async def _keep(self, loop: Loop, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await work()
                raise TaskEnded(f"the {loop.name} loop returned")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    return
                now = self._clock()
                loop.crashes.append(now)
                while loop.crashes and now - loop.crashes[0] > CRASH_WINDOW:
                    loop.crashes.popleft()
                loop.last_error = reason = f"{type(exc).__name__}: {exc}"[:300]
                self.faults.counts["task"] += 1
                if len(loop.crashes) >= MAX_CRASHES:
                    self.log.critical(
                        "task.failing", task=loop.name, error=reason, exc_info=exc,
                        crashes=len(loop.crashes), within_s=CRASH_WINDOW,
                        detail="it keeps dying: stopping the router (exit 1) so that its "
                        "supervisor (systemd) starts it afresh")
                    self.on_fatal(f"the {loop.name} loop died {len(loop.crashes)} times "
                                  f"within {CRASH_WINDOW:g}s: {reason}")
                    return
                delay = min(30.0, FIRST_BACKOFF * 2 ** (len(loop.crashes) - 1))
                loop.restarts += 1
                self.log.critical("task.crashed", task=loop.name, error=reason, exc_info=exc,
                                  restart_in_s=delay, restarts=loop.restarts,
                                  detail="restarting it")
                await asyncio.sleep(delay)
                loop.started = self._clock()

    def watchdog(self) -> None:
        """Pet systemd's watchdog while every loop turns; say once when one does not."""
        stale = self.stale()
        if stale:
            if not self._watchdog_withheld:
                self.log.critical("watchdog.withheld", loops={n: round(s, 1) for n, s in stale},
                                  detail="a loop has not turned for too long; systemd's "
                                  "watchdog (if any) will restart the router")
            self._watchdog_withheld = True
            return
        if self._watchdog_withheld:
            self.log.warning("watchdog.resumed", detail="every loop turns again")
            self._watchdog_withheld = False
        sdnotify.notify("WATCHDOG=1")

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        self._stopping = True
        tasks = [loop.task for loop in self.loops.values() if loop.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
