"""The alert engine inside the router: queue, group, compose, deliver, retry, escalate.

Small stages, each in its own module and testable alone, joined here:

    alert action ─▶ flap ─▶ repeat ─▶ silence ─▶ outbox item (waiting, group_wait)
    (enqueue.py: flap.py, repeat.py; admit.py: silence.py, inhibit.py)
                                                        │ group due
                                                        ▼
    timers (stable again, repeat_interval) ───▶ compose one message per group
    (timers.py)                                 (compose.py: grouping.py, render.py)
                                                        │ per receiver: oldest first,
                                                        │ a few groups side by side
                                                        ▼ (deliver.py)
                    attempt (a warm sender worker, bounded) ─▶ sent | retry with
                    (attempts.py: pool.py)      backoff (Retry-After) | fallback receiver
                                                | expired at max_age (settle.py, escalate.py)

:meth:`AlertEngine.enqueue` is what the ``alert`` action calls; it only writes rows
(in the engine's group commit, :mod:`.commit`) and never waits for a delivery.
Everything after it runs in :meth:`AlertEngine.run`, a background task of the
router, and in the attempts it starts. Every state is a row in the journal first.
The stages share one :class:`~knotify.alerts.core.Core` (settings, stores, the
injected clock); :meth:`AlertEngine.tick` does one turn of them all, so a test can
drive the engine on a fake clock without a router.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from knotify.actions.base import ActionContext, AlertRequest
from knotify.alerts import compose, control, timers
from knotify.alerts.adopt import adopt
from knotify.alerts.attempts import Attempts
from knotify.alerts.commit import GroupCommit
from knotify.alerts.core import MAX_SLEEP, Core, PeerGate
from knotify.alerts.deliver import Delivery
from knotify.alerts.enqueue import Enqueue
from knotify.alerts.pool import WorkerPool
from knotify.alerts.receivers import AlertSettings, EngineSettings, Receiver
from knotify.alerts.settle import Settle
from knotify.alerts.silence import SilenceStore
from knotify.alerts.since import RuleSince
from knotify.clock import SYSTEM, Clock
from knotify.errors import JournalError
from knotify.event import Event
from knotify.outcome import Outcome
from knotify.store.outbox import Outbox
from knotify.templates import event_fields
from knotify.tracker import Tracker, Transition

if TYPE_CHECKING:
    from knotify.rules import Rule
    from knotify.store.events import EventStore

__all__ = ["MAX_SLEEP", "AlertEngine"]


class AlertEngine:
    def __init__(self, settings: EngineSettings, journal: EventStore,
                 tracker: Tracker, log: Any,
                 publish: Callable[[str, dict[str, Any]], None],
                 clock: Clock = SYSTEM) -> None:
        self.core = core = Core(settings, journal, tracker, log, publish, clock)
        self._commit = GroupCommit(journal, core.new_turn)
        self._settle = Settle(core, self._commit)
        self._attempts = Attempts(core, self._commit, self._settle)
        self._delivery = Delivery(core, self._attempts)
        self._enqueue = Enqueue(core, self._commit)
        core.wake = self.wake
        core.kick = self._delivery.kick
        #: Called at every turn of :meth:`run` (the router's supervisor watches it).
        self.beat: Callable[[], None] = lambda: None
        self._wake: asyncio.Event | None = None
        self._adopted = False
        self.rules_loaded(settings.rules)

    # -- what the router and the ops see ---------------------------------------------------

    @property
    def settings(self) -> AlertSettings:
        return self.core.settings

    @property
    def receivers(self) -> Mapping[str, Receiver]:
        return self.core.receivers

    @property
    def journal(self) -> EventStore:
        return self.core.journal

    @property
    def outbox(self) -> Outbox:
        return self.core.outbox

    @property
    def silences(self) -> SilenceStore:
        return self.core.silences

    @property
    def peers(self) -> PeerGate | None:
        """Router peering's send gate (set by knotify.peers.service.Peers.start)."""
        return self.core.peers

    @peers.setter
    def peers(self, gate: PeerGate | None) -> None:
        self.core.peers = gate

    @property
    def rule_since(self) -> RuleSince:
        return self.core.rule_since

    @property
    def result_dir(self) -> str:
        return self.core.result_dir

    @property
    def pool(self) -> WorkerPool:
        return self.core.pool

    @property
    def counts(self) -> dict[str, int]:
        return self.core.counts

    @property
    def commits(self) -> int:
        """Group commits of attempt starts, outcomes and queued alerts."""
        return self._commit.commits

    @property
    def inflight(self) -> dict[int, asyncio.Task[None]]:
        """Attempts (and watches of adopted ones) by message, until their outcome is journaled."""
        return self.core.flights.inflight

    def rules_loaded(self, rules: Sequence[Rule]) -> None:
        """At start and after each reload: note which alert rules are new or changed."""
        core = self.core
        try:
            with core.journal.transaction():
                core.outbox.reset_flaps(core.rule_since.loaded(rules, core.clock.time_ns()))
        except JournalError as exc:  # flap control then counts as before: degraded, not down
            core.log.error("alerts.rules_not_noted", error=str(exc),
                           detail="flap control counts transitions from before new rules")

    def apply(self, settings: EngineSettings) -> None:
        """A reload's new ``[alerts]``, receivers, rules and ``[cluster]``, from the next
        decision on (the result folder stays where it is until a restart); alert rules
        new or changed are noted (:meth:`rules_loaded`)."""
        self.core.engine_settings = replace(settings, result_dir=self.core.result_dir)
        self.rules_loaded(settings.rules)

    def wake(self) -> None:
        """Have the loop look at what is due now rather than at its planned time."""
        if self._wake is not None:
            self._wake.set()

    async def enqueue(self, ctx: ActionContext, action: AlertRequest) -> Outcome:
        """Queue the alert for one event (the ``alert`` action, in the key's order)."""
        return await self._enqueue.enqueue(ctx, action)

    def silence_reason(self, ev: Event, tr: Transition, rule: str) -> str | None:
        """For exec actions of rules with ``honor_silences``: the silence that mutes them."""
        match = self.core.silences.match(event_fields(ev, tr, rule))
        return match.describe() if match is not None else None

    def command(self, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer a router op (:mod:`knotify.ops.silence`, :mod:`knotify.ops.alerts`);
        WireError for a request that cannot be served."""
        return control.command(self.core, op, msg, self.info)

    def info(self) -> dict[str, Any]:
        core = self.core
        try:
            counts = core.outbox.counts()
        except sqlite3.Error:
            counts = {}
        now = core.clock.time_ns()
        return {"attempts_running": len(core.flights.inflight), "outcomes": dict(core.counts),
                "workers": core.pool.info(), "commits": self._commit.commits,
                "silences_active": len([s for s in core.silences.list() if s.active(now)]),
                **counts}

    # -- the background loop ----------------------------------------------------------------

    async def run(self) -> None:
        core = self.core
        self._wake = asyncio.Event()
        self._delivery.armed = True
        if not self._adopted:  # once: a restarted loop must not adopt its own attempts
            self._adopted = True
            try:
                adopt(core, self._attempts, self._settle)
            except (JournalError, sqlite3.Error) as exc:
                core.log.error("alerts.adopt_failed", error=str(exc))
        while not core.stopping:
            self.beat()
            self._wake.clear()
            try:
                delay = self.tick()
            except (JournalError, sqlite3.Error) as exc:
                core.log.warning("alerts.journal_failed", error=str(exc), retry_in_s=1.0)
                delay = 1.0
            except Exception:
                core.log.exception("alerts.tick_crashed")
                delay = 1.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def tick(self) -> float:
        """Do everything that is due (timers, compose, Alertmanager, deliver); seconds
        until something else will be."""
        core = self.core
        now = core.clock.time_ns()
        core.new_turn()
        dues = [timers.timers(core, now), compose.compose(core, now),
                timers.alertmanager(core, now), self._delivery.step(now)]
        if core.again:
            core.again = False
            return 0.0
        nxt = min((d for d in dues if d is not None), default=None)
        delay = MAX_SLEEP if nxt is None else max(
            0.0, min(MAX_SLEEP, (nxt - core.clock.time_ns()) / 1e9))
        core.next_tick_ns = core.clock.time_ns() + int(delay * 1e9)
        return delay

    async def stop(self, timeout: float) -> None:
        """Let running attempts finish within ``timeout``; the rest are adopted at restart.

        Then the workers' stdin is closed: idle ones exit, busy ones finish their job
        and exit, and the next start reads what they did.
        """
        core = self.core
        core.stopping = True
        tasks = list(core.flights.inflight.values())
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
                core.log.info("alerts.left_running", attempts=len(still),
                              detail="their workers finish on their own; read at the next "
                              "start")
        self._commit.commit()
        await core.pool.close()
