"""Runs actions: one at a time per (host, kind, name, vs), in event order; keys in parallel.

Alerts have a lane of their own per key: they keep their order among themselves but
never wait behind the key's other actions (a hung ``systemctl restart`` must not hold
the failover page for its timeout), nor for a slot (queueing an alert forks nothing).

A run is journaled as pending in the same transaction as its event. Before it
starts it is marked running and committed (the starts of one loop turn share a
commit), so a crash leaves it "interrupted", never repeated: at most once. Pending
runs survive a restart and run then. Outcomes are committed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from knotify import log as logmod
from knotify.actions.base import Action, ActionContext, Services
from knotify.clock import SYSTEM, Clock
from knotify.errors import JournalError
from knotify.event import Event, Key
from knotify.outcome import Outcome
from knotify.rules import Rule
from knotify.store.events import EventStore
from knotify.templates import event_fields
from knotify.tracker import Tracker, Transition
from knotify.vocab import ERROR, INTERRUPTED, OK, SILENCED, SKIPPED

#: Where a run waits: its key, or ``(key, lane)`` for a kind with a lane of its own
#: (:attr:`knotify.actions.base.Action.lane`: the key's alerts).
Lane = Key | tuple[Key, str]


def lane_of(run: Run) -> Lane:
    lane = run.action.lane
    return (run.event.key, lane) if lane else run.event.key


@dataclass(slots=True)
class Run:
    rowid: int
    event: Event
    transition: Transition
    rule: Rule
    index: int
    action: Action
    queued_mono: float
    started_ns: int | None = None


class Executor:
    def __init__(self, journal: EventStore, tracker: Tracker, log: Any,
                 publish: Callable[[str, dict[str, Any]], None], max_parallel: int = 32,
                 clock: Clock = SYSTEM) -> None:
        self.journal = journal
        #: Stamps runs' starts and ends, ages events for ``max_age``, times ``delay``
        #: (from :attr:`Run.queued_mono`, read on this clock's ``monotonic``).
        self.clock = clock
        # Many keys changing at once (a whole cluster failing over) must not fork a
        # process per key at the same moment: at most this many actions run at a time.
        self.slots = asyncio.Semaphore(max_parallel)
        self._tracker = tracker
        self.log = log
        self.publish = publish
        self.queues: dict[Lane, deque[Run]] = {}
        self.workers: dict[Lane, asyncio.Task[None]] = {}
        self.active: dict[Lane, Run] = {}
        self.updates: list[tuple[int, Outcome, int | None, int]] = []
        self.stopping = False
        self.counts: dict[str, int] = {}
        self._starting: list[tuple[Run, asyncio.Future[None]]] = []
        self._commit_scheduled = False
        #: What actions may use (the router adds its alert engine and silences).
        self.services = Services(log=log, publish=publish)
        #: Whether anyone follows what ``publish`` sends (else it is not built).
        self.watched: Callable[[], bool] = lambda: True

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def idle(self, key: Key) -> bool:
        """Nothing of ``key`` but alerts is queued or running."""
        return key not in self.queues

    def run_inline(self, run: Run) -> Outcome:
        """Run an instant action now, inside the transaction that journals its event.

        The router holds the log's lines until that commits (and drops them if it fails),
        and journals the outcome in the run's one row; :meth:`ran_inline` follows the commit.
        """
        try:
            outcome = run.action.run_inline(run.event, run.transition, run.rule.id, self.log,
                                            run.rowid)
        except Exception as exc:  # an action bug must not stop intake
            self.log.exception("action.crashed", event_id=run.event.id, rule=run.rule.id)
            outcome = Outcome(ERROR, detail=f"{type(exc).__name__}: {exc}")
        self._done_line(run, outcome, self.log, self.clock.time_ns())
        return outcome

    def ran_inline(self, counts: dict[str, int], done: list[tuple[Run, Outcome]]) -> None:
        """Once a batch is committed: count its instant actions' outcomes, and publish
        ``done`` (kept only while someone watches)."""
        for status, n in counts.items():
            self.counts[status] = self.counts.get(status, 0) + n
        for run, outcome in done:
            self._publish(run, outcome)

    def submit(self, run: Run) -> None:
        key = lane_of(run)
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = deque()
        queue.append(run)
        if key not in self.workers:
            self.workers[key] = asyncio.get_running_loop().create_task(self._work(key))

    def flush(self) -> None:
        """Write finished runs' outcomes (inside the caller's transaction, if any).

        They leave memory only with the commit that holds them: if that transaction
        (this one or the caller's) rolls back, they are kept for the next try, so an
        action that ended is never left ``running`` because one commit failed.
        """
        if not self.updates:
            return
        with self.journal.transaction():
            updates, self.updates = self.updates, []

            def keep() -> None:
                self.updates[:0] = updates

            self.journal.on_rollback(keep)
            self.journal.finish_runs(updates)

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        """One transaction for every start and outcome of this loop turn (group commit)."""
        self._commit_scheduled = False
        batch, self._starting = self._starting, []
        try:
            with self.journal.transaction():
                self.flush()
                for run, _ in batch:
                    self.journal.start_run(run.rowid, run.started_ns or self.clock.time_ns())
        except JournalError as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _mark_started(self, run: Run) -> None:
        """Journal that ``run`` starts, before it starts: after a crash it is never repeated."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._starting.append((run, fut))
        self._schedule_commit()
        await fut

    async def _work(self, key: Lane) -> None:
        queue = self.queues[key]
        try:
            while queue and not self.stopping:
                run = queue[0]
                await self._one(key, run)
                queue.popleft()
        finally:
            self.workers.pop(key, None)
            self.active.pop(key, None)
            if not queue:
                self.queues.pop(key, None)

    async def _one(self, key: Lane, run: Run) -> None:
        rule, ev = run.rule, run.event
        log = self.log.bind(event_id=ev.id, rule=rule.id, action=run.action.kind,
                            run=run.rowid)
        if rule.delay:
            wait = run.queued_mono + rule.delay - self.clock.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        async with self._slot(run):
            if self.stopping:
                return  # not started: stays pending in the journal for the next start
            reason = self._skip_reason(ev.key, run)
            if reason:
                self._record(run, Outcome(SKIPPED, detail=reason), log)
                return
            silences = self.services.silences
            if (run.rule.honor_silences and silences is not None
                    and run.action.skipped_when_silenced):
                silence = silences.silence_reason(ev, run.transition, rule.id)
                if silence:
                    self._record(run, Outcome(SILENCED, detail=silence), log)
                    return
            await self._start_and_run(key, run, log)

    def _slot(self, run: Run) -> contextlib.AbstractAsyncContextManager[Any]:
        """A slot of ``max_parallel_actions`` for what forks; an alert only writes rows."""
        return self.slots if run.action.takes_slot else contextlib.nullcontext()

    async def _start_and_run(self, key: Lane, run: Run, log: Any) -> None:
        rule, ev, tr = run.rule, run.event, run.transition
        run.started_ns = self.clock.time_ns()
        if run.action.durable_start:
            while True:
                try:
                    await self._mark_started(run)
                    break
                except JournalError as exc:
                    # Not journaled as started means not started: wait for the journal.
                    log.error("action.start_not_journaled", error=str(exc), retry_in_s=1.0)
                    await asyncio.sleep(1.0)
                    if self.stopping:
                        raise asyncio.CancelledError from None
        self.active[key] = run
        ctx = ActionContext(ev, tr, rule.id, event_fields(ev, tr, rule.id), log,
                            run=run.rowid, index=run.index, services=self.services)
        try:
            outcome = await run.action.run(ctx)
        except asyncio.CancelledError:
            self._record(run, Outcome(INTERRUPTED, detail="router shut down while it ran"), log)
            raise
        except Exception as exc:  # an action bug must not stop the key's queue
            log.exception("action.crashed")
            outcome = Outcome(ERROR, detail=f"{type(exc).__name__}: {exc}")
        finally:
            self.active.pop(key, None)
        self._record(run, outcome, log)

    def _skip_reason(self, key: Key, run: Run) -> str:
        rule = run.rule
        if rule.skip_if_superseded:
            current = self._tracker.states.get(key)
            if current is not None and current.epoch > run.transition.epoch:
                return (f"superseded: {key[2]} is now {current.state} "
                        f"(event {current.event_id}) before this action started")
        if rule.max_age is not None:
            age = (self.clock.time_ns() - run.event.recv_ns) / 1e9
            if age > rule.max_age:
                return f"expired: {age:.1f}s old, rule max_age is {rule.max_age:g}s"
        return ""

    def _record(self, run: Run, outcome: Outcome, log: Any) -> None:
        ended = self.clock.time_ns()
        self.updates.append((run.rowid, outcome, run.started_ns, ended))
        self._done_line(run, outcome, log, ended)
        self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
        self._publish(run, outcome)
        self._schedule_commit()

    @staticmethod
    def _done_line(run: Run, outcome: Outcome, log: Any, ended: int) -> None:
        level = run.action.done_level if outcome.status in (OK, SKIPPED) else "warning"
        if logmod.enabled(log, level):
            logmod.emit(log, level, "action.done", {
                "event_id": run.event.id, "rule": run.rule.id, "run": run.rowid,
                "status": outcome.status, "exit_code": outcome.exit_code,
                "detail": outcome.detail or None,
                "seconds": round((ended - run.started_ns) / 1e9, 3) if run.started_ns else None,
            })

    def _publish(self, run: Run, outcome: Outcome) -> None:
        if self.watched():
            self.publish("action", {
                "event_id": run.event.id, "run": run.rowid, "rule": run.rule.id,
                "kind": run.action.kind, "status": outcome.status,
                "exit_code": outcome.exit_code, "detail": outcome.detail,
                "host": run.event.host, "name": run.event.name, "state": run.transition.state,
            })

    async def drain(self, timeout: float) -> None:
        """Stop starting new runs; let the running ones finish within ``timeout``, then cancel."""
        self.stopping = True
        tasks = list(self.workers.values())
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
        self.flush()
