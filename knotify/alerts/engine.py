"""The alert engine inside the router: queue, group, compose, deliver, retry, escalate.

Small stages, each in its own module and testable alone, joined here:

    alert action ─▶ flap ─▶ repeat ─▶ silence ─▶ outbox item (waiting, group_wait)
                                                        │ group due
                                                        ▼
    timers (stable again, repeat_interval) ───▶ compose one message per group
                                                        │ per receiver: oldest first,
                                                        │ a few groups side by side
                                                        ▼
                    attempt (a warm sender worker, bounded) ─▶ sent | retry with
                    backoff (Retry-After) | fallback receiver | expired at max_age

:meth:`AlertEngine.enqueue` is what the ``alert`` action calls, inside the
executor (in the alert lane of its key: in order among the key's alerts, never behind
its execs); it only writes rows (in the
engine's group commit) and never waits for a delivery. Everything after it runs
in :meth:`AlertEngine.run`, a background task of the router, and in the attempts
it starts. Every state is a row in the journal first; the starts and outcomes of
attempts and the alerts queued in one event-loop turn share one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from knotify.actions.base import ActionContext, AlertRequest
from knotify.alerts import (
    alertmanager_desk,
    attempt,
    flap,
    grouping,
    incident,
    inhibit,
    render,
    repeat,
)
from knotify.alerts.pool import Worker, WorkerPool
from knotify.alerts.receivers import AlertSettings, EngineSettings, Receiver
from knotify.alerts.redact import scrub
from knotify.alerts.silence import Silence, SilenceStore
from knotify.alerts.since import RuleSince
from knotify.alerts.stream import Stream
from knotify.errors import JournalError, PoolError, SilenceError, WireError
from knotify.event import Event
from knotify.outcome import Outcome
from knotify.store import outbox
from knotify.store.alertmanager import AlertmanagerStore
from knotify.store.outbox import Outbox, StreamRow
from knotify.store.rule_since import RuleSinceRows
from knotify.store.silences import SilenceRows
from knotify.templates import event_fields, iso_time
from knotify.tracker import KeyState, Tracker, Transition
from knotify.units import format_duration
from knotify.vocab import (
    COMPOSED,
    DROPPED,
    EXPIRED,
    INHIBITED,
    INTERRUPTED,
    NOTICE,
    OK,
    PENDING,
    SENDING,
    SENT,
    SILENCED,
    SKIPPED,
    SUPPRESSED,
    TRANSITION,
    WAITING,
)

if TYPE_CHECKING:
    from knotify.peers.gate import Verdict
    from knotify.rules import Rule
    from knotify.store.events import EventStore

#: Router ops this engine answers.
OPS = ("silence_add", "silence_list", "silence_expire", "alerts")
MAX_SLEEP = 1.0
#: The shortest hold after a "slow down" answer, whatever its Retry-After says.
MIN_SLOW_DOWN = 1.0
#: Seconds between two of the engine's group commits, at least.
COMMIT_INTERVAL = 0.01
#: A healthy receiver's attempts journaled at once: this many times those it may have at
#: workers (max_parallel_per_receiver), so a job is ready whenever a worker is.
AHEAD = 4


class PeerGate(Protocol):
    """Router peering as the engine sees it (knotify.peers.service.Peers)."""

    def gate(self, message: outbox.MessageRow, now_ns: int) -> Verdict: ...
    def skip(self, message: outbox.MessageRow, verdict: Verdict, now_ns: int) -> None: ...
    def sent(self, message: outbox.MessageRow, now_ns: int) -> None: ...
    def changed(self) -> None: ...


def _clock(ns: int) -> str:
    return iso_time(ns)


@dataclass(slots=True)
class _Settled:
    """An attempt's journaled outcome, for what follows the commit."""

    message: outbox.MessageRow
    receiver: str
    verdict: attempt.Verdict
    urls: list[dict[str, Any]]
    error: str
    delay: float
    hold_ns: int


class AlertEngine:
    def __init__(self, settings: EngineSettings, journal: EventStore,
                 tracker: Callable[[], Tracker], log: Any,
                 publish: Callable[[str, dict[str, Any]], None]) -> None:
        self._settings = settings
        self.journal = journal
        self._tracker = tracker
        self.log = log
        self.publish = publish
        self.outbox = Outbox(journal.database)
        self.silences = SilenceStore(SilenceRows(journal.database))
        self.am = alertmanager_desk.Desk(AlertmanagerStore(journal.database), self.outbox, log)
        #: Since when each alert rule exists: flap control counts only from then.
        self.rule_since = RuleSince(RuleSinceRows(journal.database))
        self.result_dir = settings.result_dir
        #: Attempts (and watches of adopted ones) by message, until their outcome is journaled.
        self.inflight: dict[int, asyncio.Task[None]] = {}
        #: Messages at a worker (or waiting for one), by message: their receiver.
        self._working: dict[int, str] = {}
        #: The receiver of every message in ``inflight``.
        self._receiver_of: dict[int, str] = {}
        #: Jobs at workers, by receiver, and attempts waiting for their turn (_enter).
        self._sending: dict[str, int] = {}
        self._turns: dict[str, deque[asyncio.Future[None]]] = {}
        #: Receivers that answered "slow down": nothing goes to them before this (ns).
        self._holds: dict[str, int] = {}
        self._ops: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._ops_scheduled = False
        self._last_commit = 0.0
        self._kicked = False
        #: When the loop's next tick is planned (ns); 0: at once.
        self._next_tick_ns = 0
        self._recent: deque[int] = deque(maxlen=64)
        self.pool = WorkerPool(lambda: self.settings.max_parallel,
                               lambda: self.settings.worker_idle, log)
        self.counts: dict[str, int] = {}
        #: Group commits of attempt starts, outcomes and queued alerts.
        self.commits = 0
        self._wake: asyncio.Event | None = None
        self._again = False
        self._stopping = False
        self._adopted = False
        #: Called at every turn of :meth:`run` (the router's supervisor watches it).
        self.beat: Callable[[], None] = lambda: None
        #: The cluster labels and hosts of this turn (built on first use; see _index).
        self._turn_index: incident.ClusterIndex | None = None
        self._turn_active: inhibit.Active | None = None
        #: Router peering ([peers]): the send gate and the notification log, or None.
        self.peers: PeerGate | None = None
        self.rules_loaded(settings.rules)

    def rules_loaded(self, rules: Sequence[Rule]) -> None:
        """At start and after each reload: note which alert rules are new or changed."""
        try:
            with self.journal.transaction():
                self.outbox.reset_flaps(self.rule_since.loaded(rules, time.time_ns()))
        except JournalError as exc:  # flap control then counts as before: degraded, not down
            self.log.error("alerts.rules_not_noted", error=str(exc),
                           detail="flap control counts transitions from before new rules")

    @property
    def settings(self) -> AlertSettings:
        return self._settings.alerts

    @property
    def receivers(self) -> Mapping[str, Receiver]:
        return self._settings.receivers

    def apply(self, settings: EngineSettings) -> None:
        """A reload's new ``[alerts]``, receivers, rules and ``[cluster]``, from the next
        decision on (the result folder stays where it is until a restart); alert rules
        new or changed are noted (:meth:`rules_loaded`)."""
        self._settings = replace(settings, result_dir=self._settings.result_dir)
        self.rules_loaded(settings.rules)

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- intake: the alert action --------------------------------------------------------

    async def enqueue(self, ctx: ActionContext, action: AlertRequest) -> Outcome:
        """Queue the alert for one event (called by the action, in the key's order).

        Its rows join the engine's next group commit: the alerts of a mass failover,
        queued in the same loop turn, share one COMMIT instead of one each.
        """
        now = time.time_ns()
        outcome, alert = await self._journal_op(
            functools.partial(self._enqueue_rows, ctx, action, now))
        return self._queued(ctx, action, outcome, alert, now)

    def _queued(self, ctx: ActionContext, action: AlertRequest, outcome: Outcome,
                alert: str | None, now: int) -> Outcome:
        """After the commit: count, log, warm workers up, wake the loop."""
        self._count(outcome.status)
        if outcome.status == OK and alert is not None:
            self._warm(now, len(action.receivers))
        ctx.log.info("alert.queued", alert=alert, status=outcome.status,
                     stream=f"{ctx.rule}#{ctx.index}",
                     receivers=list(action.receivers), detail=outcome.detail)
        # Its group is due in group_wait: wake the loop only if it would sleep past that
        # (a mass failover queues hundreds of alerts; a tick for each loop turn is waste).
        if now + int(self.settings.group_wait * 1e9) < self._next_tick_ns:
            self.wake()
        return outcome

    def _enqueue_rows(self, ctx: ActionContext, action: AlertRequest,
                      now: int) -> tuple[Outcome, str | None]:
        """The outbox rows of one alert (inside the caller's transaction)."""
        ev, tr = ctx.event, ctx.transition
        run = ctx.run
        stream_id = f"{ctx.rule}#{ctx.index}"
        s = self.settings
        fields = dict(ctx.fields)
        if run is not None and self.outbox.has_run(run):
            return Outcome(OK, detail="already queued before the router restarted"), None
        row = self.outbox.stream(stream_id, ev.key) or StreamRow(
            stream_id, ev.key, [], {}, None, None, {}, Stream())
        stream = row.state
        if stream.alerted_state != tr.prev_state and self._ends_only(ctx):
            # The end of an incident goes to the rule that paged for it, and only then.
            return Outcome(SKIPPED, detail=f"nothing was alerted for {tr.prev_state}, so its "
                           "end is not news"), None
        row.receivers = list(action.receivers)
        row.spec = dict(action.spec)
        row.repeat_s = action.repeat_s
        is_transition = tr.cls == TRANSITION
        # What this alert says: the state, or for news that is not a change (a new
        # priority, MASTER_RX_LOWER_PRI) the news itself, so the next news is not
        # taken for a repeat of this one.
        said = tr.state if tr.cls != NOTICE else f"{tr.state}/{ev.state}/{ev.prio}"
        count = 0
        if s.flap.enabled and is_transition and not stream.flapping:
            count = self.journal.transitions_in_window(
                ev.id, max(ev.ts_ns - int(s.flap.window_s * 1e9),
                           self.rule_since.since(stream_id)))
        decision = flap.on_event(stream, is_transition, count, s.flap)
        alert: str | None = None
        reason = ""
        if decision == flap.START:
            flap.start(stream, now)
            alert = render.FLAPPING
            fields["change"] = render.change_text(
                alert, fields, count=count, window=format_duration(s.flap.window_s),
                stable=format_duration(s.flap.stable_s))
        elif decision == flap.SUPPRESS:
            stream.suppressed += 1
            reason = (f"suppressed: {ev.label} is flapping (since "
                      f"{_clock(stream.flap_since_ns or now)}); held back until it is "
                      f"stable for {format_duration(s.flap.stable_s)}")
        else:
            policy = self._repeat_policy(row.repeat_s)
            verdict = repeat.on_event(stream, said, tr.epoch, now, policy)
            if verdict == repeat.SUPPRESS:
                reason = (f"suppressed: {tr.state} was already alerted at "
                          f"{_clock(stream.last_ns or now)}")
                if policy.interval_s > 0 and tr.state in policy.states:
                    reason += f"; repeated every {format_duration(policy.interval_s)}"
            elif verdict == repeat.REPEAT:
                alert = render.REPEAT
                current = self._tracker().states.get(ev.key)
                since = format_duration(max(0, now - current.since_ns) / 1e9) \
                    if current is not None else ""
                fields["change"] = render.change_text(alert, fields, since=since)
            else:
                alert = render.FIRING
                fields["change"] = render.change_text(alert, fields)
        if alert is None:
            for receiver in row.receivers:
                self._add_item(row, run, ev.id, receiver, render.FIRING, SUPPRESSED,
                               reason, fields, now)
            self.outbox.put_stream(row)
            outcome = Outcome(SKIPPED, detail=reason)
        else:
            repeat.queued(stream, said, tr.epoch, now)
            row.event_id = ev.id
            row.fields = fields
            queued, silenced, inhibited = self._queue(row, run, ev.id, alert, fields, now)
            self.outbox.put_stream(row)
            outcome = self._outcome(alert, queued, silenced, inhibited)
        return outcome, alert

    def _ends_only(self, ctx: ActionContext) -> bool:
        """The rule fired for this event only because it ends an incident (send_resolved)."""
        rule = next((r for r in self._settings.rules if r.id == ctx.rule), None)
        return rule is not None and rule.send_resolved and rule.ends_only(ctx.event,
                                                                          ctx.transition)

    def _warm(self, now: int, receivers: int) -> None:
        """Alerts are queued: have workers ready by the time their group is due.

        As many as alerts were queued within about a group_wait, up to what the
        receivers may use at once (and the pool size).
        """
        self._recent.append(now)
        since = now - int((self.settings.group_wait + 1.0) * 1e9)
        recent = sum(1 for t in self._recent if t >= since)
        self.pool.warm(min(recent, receivers * self.settings.max_parallel_per_receiver))

    def _outcome(self, alert: str, queued: list[str], silenced: list[tuple[str, Silence]],
                 inhibited: list[tuple[str, inhibit.Inhibition]]) -> Outcome:
        if not queued and not silenced:
            return Outcome(SKIPPED, detail="; ".join(
                f"{name}: {i.describe()}" for name, i in inhibited))
        if not queued:
            return Outcome(SILENCED, detail="; ".join(
                [f"{name}: {s.describe()}" for name, s in silenced]
                + [f"{name}: {i.describe()}" for name, i in inhibited]))
        detail = f"{alert} alert queued for {', '.join(queued)}"
        if self.settings.group_wait:
            detail += f" (grouped for {format_duration(self.settings.group_wait)})"
        if silenced:
            detail += "; silenced for " + ", ".join(
                f"{name} ({s.describe()})" for name, s in silenced)
        if inhibited:
            detail += "; " + ", ".join(f"{name} {i.describe()}" for name, i in inhibited)
        return Outcome(OK, detail=detail)

    def _repeat_policy(self, repeat_s: float | None) -> repeat.RepeatPolicy:
        base = self.settings.repeat
        if repeat_s is None:
            return base
        return repeat.RepeatPolicy(repeat_s, base.states)

    def _index(self) -> incident.ClusterIndex:
        """The cluster view of the tracker's states for this turn of the engine (the
        states do not change within one: :meth:`tick` and :meth:`_commit_ops` reset it)."""
        if self._turn_index is None:
            self._turn_index = incident.ClusterIndex(self._tracker().states,
                                                     self._settings.cluster)
        return self._turn_index

    def _mark_incident(self, fields: dict[str, str]) -> None:
        """Grouping by incident: the alert's incident and hosts go with its fields."""
        if incident.INCIDENT in self.settings.group_by:
            fields["incident"], fields[incident.HOSTS_FIELD] = self._index().incident(
                fields.get("host", ""), fields.get("kind", ""), fields.get("name", ""))
        else:  # explicit group_by: today's messages exactly
            fields.pop("incident", None)
            fields.pop(incident.HOSTS_FIELD, None)

    def _add_item(self, row: StreamRow, run: int | None, event_id: str, receiver: str,
                  alert: str, status: str, detail: str | None, fields: dict[str, str],
                  now: int) -> int:
        self._mark_incident(fields)
        key = grouping.group_key(receiver, fields, self.settings.group_by)
        return self.outbox.add_item(
            run=run, event_id=event_id, receiver=receiver, stream=row.stream_id, alert=alert,
            status=status, detail=detail, group_key=key, fields=fields, spec=row.spec,
            created_ns=now, due_ns=now + int(self.settings.group_wait * 1e9))

    def _inhibition(self, fields: dict[str, str]) -> inhibit.Inhibition | None:
        """What inhibits an alert now (the sources of this turn, built on first use)."""
        rules = self.settings.inhibit
        if not rules:
            return None
        if self._turn_active is None or self._turn_active.rules is not rules:
            self._turn_active = inhibit.Active(rules, self._tracker().states, self._index())
        return self._turn_active.match(fields)

    def _queue(self, row: StreamRow, run: int | None, event_id: str, alert: str,
               fields: dict[str, str], now: int
               ) -> tuple[list[str], list[tuple[str, Silence]],
                          list[tuple[str, inhibit.Inhibition]]]:
        queued: list[str] = []
        silenced: list[tuple[str, Silence]] = []
        inhibited: list[tuple[str, inhibit.Inhibition]] = []
        muted = self._inhibition(fields)
        for receiver in row.receivers:
            match = self.silences.match({**fields, "receiver": receiver}, now)
            if match is not None:
                silenced.append((receiver, match))
                self._add_item(row, run, event_id, receiver, alert, SILENCED,
                               match.describe(), fields, now)
            elif muted is not None:
                inhibited.append((receiver, muted))
                self._add_item(row, run, event_id, receiver, alert, INHIBITED,
                               muted.describe(), fields, now)
            else:
                queued.append(receiver)
                self._add_item(row, run, event_id, receiver, alert, WAITING, None,
                               fields, now)
        if muted is not None:
            self.log.info("alert.inhibited", event_id=event_id, receivers=row.receivers,
                          by=muted.event_id, rule=muted.rule, state=muted.state)
        return queued, silenced, inhibited

    def silence_reason(self, ev: Event, tr: Transition, rule: str) -> str | None:
        """For exec actions of rules with ``honor_silences``: the silence that mutes them."""
        match = self.silences.match(event_fields(ev, tr, rule))
        return match.describe() if match is not None else None

    # -- the background loop --------------------------------------------------------------

    async def run(self) -> None:
        self._wake = asyncio.Event()
        if not self._adopted:  # once: a restarted loop must not adopt its own attempts
            self._adopted = True
            try:
                self._adopt()
            except (JournalError, sqlite3.Error) as exc:
                self.log.error("alerts.adopt_failed", error=str(exc))
        while not self._stopping:
            self.beat()
            self._wake.clear()
            try:
                delay = self.tick()
            except (JournalError, sqlite3.Error) as exc:
                self.log.warning("alerts.journal_failed", error=str(exc), retry_in_s=1.0)
                delay = 1.0
            except Exception:
                self.log.exception("alerts.tick_crashed")
                delay = 1.0
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def tick(self) -> float:
        """Do everything that is due; seconds until something else will be."""
        now = time.time_ns()
        self._turn_index = self._turn_active = None
        dues = [self._timers(now), self._compose(now), self._alertmanager(now),
                self._deliver(now)]
        if self._again:
            self._again = False
            return 0.0
        nxt = min((d for d in dues if d is not None), default=None)
        delay = MAX_SLEEP if nxt is None else max(0.0, min(MAX_SLEEP,
                                                           (nxt - time.time_ns()) / 1e9))
        self._next_tick_ns = time.time_ns() + int(delay * 1e9)
        return delay

    async def stop(self, timeout: float) -> None:
        """Let running attempts finish within ``timeout``; the rest are adopted at restart.

        Then the workers' stdin is closed: idle ones exit, busy ones finish their job
        and exit, and the next start reads what they did.
        """
        self._stopping = True
        tasks = list(self.inflight.values())
        if tasks:
            _, still = await asyncio.wait(tasks, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
                self.log.info("alerts.left_running", attempts=len(still),
                              detail="their workers finish on their own; read at the next "
                              "start")
        self._commit_ops()
        await self.pool.close()

    # -- timers: stable again, repeat_interval ---------------------------------------------

    def _timers(self, now: int) -> int | None:
        nxt: int | None = None
        states = self._tracker().states
        for row in self.outbox.timed_streams(self.settings.repeat.states):
            current = states.get(row.key)
            if current is None:
                continue
            stream = row.state
            if stream.flapping:
                due = flap.stable_due(stream, current.since_ns, now, self.settings.flap)
                assert due is not None
                if due <= now:
                    with self.journal.transaction():
                        self._stable(row, current, now)
                else:
                    nxt = due if nxt is None else min(nxt, due)
                continue
            due = repeat.due(stream, current.state, current.epoch,
                             self._repeat_policy(row.repeat_s))
            if due is None:
                continue
            if due <= now:
                with self.journal.transaction():
                    self._repeat(row, current, now)
            else:
                nxt = due if nxt is None else min(nxt, due)
        return nxt

    def _stable(self, row: StreamRow, current: KeyState, now: int) -> None:
        stream = row.state
        rule = row.stream_id.rsplit("#", 1)[0]
        loaded = self.journal.load_event(current.event_id)
        if loaded is not None:
            fields = event_fields(*loaded, rule)
        else:
            fields = {**row.fields, "state": current.state, "id": current.event_id}
        suppressed = flap.end(stream)
        fields["change"] = render.change_text(
            render.STABLE, fields, count=suppressed,
            stable=format_duration(max(0, now - current.since_ns) / 1e9))
        repeat.queued(stream, current.state, current.epoch, now)
        row.event_id = current.event_id
        row.fields = fields
        queued, silenced, _ = self._queue(row, None, current.event_id, render.STABLE, fields,
                                          now)
        self.outbox.put_stream(row)
        self.log.info("alert.stable", event_id=current.event_id, stream=row.stream_id,
                      host=row.key[0], name=row.key[2], state=current.state,
                      suppressed=suppressed, receivers=queued,
                      silenced=[n for n, _ in silenced] or None)
        self._again = True

    def _repeat(self, row: StreamRow, current: KeyState, now: int) -> None:
        fields = dict(row.fields)
        fields["change"] = render.change_text(
            render.REPEAT, fields, since=format_duration(max(0, now - current.since_ns) / 1e9))
        event_id = row.event_id or current.event_id
        repeat.queued(row.state, current.state, current.epoch, now)
        queued, silenced, _ = self._queue(row, None, event_id, render.REPEAT, fields, now)
        self.outbox.put_stream(row)
        self.log.info("alert.repeat", event_id=event_id, stream=row.stream_id,
                      host=row.key[0], name=row.key[2], state=current.state,
                      receivers=queued, silenced=[n for n, _ in silenced] or None)
        self._again = True

    def _alertmanager(self, now: int) -> int | None:
        """Alertmanager receivers: resolve what ended, re-post what lasts."""
        try:
            nxt, added = self.am.tick(now, self._tracker().states, self.receivers)
        except (JournalError, sqlite3.Error):
            raise
        except Exception:  # a bug here must not stop composing and delivering
            self._count("alertmanager_crashed")
            self.log.exception("alertmanager.tick_crashed")
            return now + int(MAX_SLEEP * 1e9)
        if added:
            self._again = True
        return nxt

    # -- grouping: compose due groups into messages ----------------------------------------

    def _compose(self, now: int) -> int | None:
        waiting = self.outbox.waiting()
        if not waiting:
            return None
        due = grouping.due_groups(waiting, now)
        if due:
            with self.journal.transaction():  # one commit for a mass failover's groups
                for rowids in due:
                    self._compose_group(rowids, now)
        return grouping.next_due(self.outbox.waiting())

    def _compose_group(self, rowids: list[int], now: int) -> None:
        items = self.outbox.items(rowids)
        if not items:
            return
        name = items[0].receiver
        receiver = self.receivers.get(name)
        event_ids = list(dict.fromkeys(i.event_id for i in items))
        if receiver is None:
            self.outbox.set_items(rowids, DROPPED,
                                  f"receiver {name!r} is no longer in the config")
            self.log.error("alert.dropped", event_ids=event_ids, receiver=name,
                           reason="the receiver is no longer in the config")
            return
        keep = []
        for item in items:
            match = self.silences.match({**item.fields, "receiver": name}, now)
            muted = self._inhibition(item.fields) if match is None else None
            if match is not None:
                self.outbox.set_items([item.rowid], SILENCED, match.describe())
                self.log.info("alert.silenced", event_id=item.event_id, receiver=name,
                              silence=match.id)
            elif muted is not None:
                self.outbox.set_items([item.rowid], INHIBITED, muted.describe())
                self.log.info("alert.inhibited", event_id=item.event_id, receivers=[name],
                              by=muted.event_id, rule=muted.rule, state=muted.state)
            else:
                keep.append(item)
        if not keep:
            return
        rendered = render.compose(
            [render.Item(i.alert, i.fields) for i in keep],
            receiver.templates.over(keep[0].spec), receiver.name, self.settings.fold_after)
        kinds = {i.alert for i in keep}
        alert = kinds.pop() if len(kinds) == 1 else "group"
        ids = list(dict.fromkeys(i.event_id for i in keep))
        message = self.outbox.add_message(name, alert, rendered.title, rendered.body,
                                          rendered.notify_type, ids, now,
                                          group_key=keep[0].group_key)
        self.outbox.set_items([i.rowid for i in keep], COMPOSED, message=message)
        if receiver.alertmanager is not None:
            try:
                self.am.composed(message, receiver, keep, self.settings.group_by, now)
            except sqlite3.Error:
                raise
            except Exception:  # the message still goes, with its events' alerts as firing
                self._count("alertmanager_crashed")
                self.log.exception("alertmanager.compose_crashed", message=message)
        self.log.info("alert.composed", event_ids=ids, message=message, receiver=name,
                      alert=alert, items=len(keep), title=rendered.title)

    # -- delivery ---------------------------------------------------------------------------
    #
    # Each receiver has a window: the oldest open message of each of its groups, at most
    # max_parallel_per_receiver of them (Outbox.windows). A healthy receiver gets up to
    # that many attempts at once; a failing one (a message in its window has failed) is
    # probed with its oldest message only, one attempt at a time, so an outage costs one
    # request per backoff step, not a storm, and the queue resumes in order. A receiver
    # that answered "slow down" is held until its Retry-After. At most max_parallel
    # attempts run in all, each on a warm sender worker (pool.py).

    def _deliver(self, now: int) -> int | None:
        nxt: int | None = None
        s = self.settings
        # An attempt whose worker is done but whose outcome is not yet committed still
        # holds its place in the window; one more behind it may start meanwhile (so its
        # start shares the commit with that outcome).
        settling: dict[str, int] = {}
        for message_id, name in self._receiver_of.items():
            if message_id not in self._working:
                settling[name] = settling.get(name, 0) + 1
        per = s.max_parallel_per_receiver
        for name, window in self.outbox.windows(
                lambda receiver: AHEAD * per + settling.get(receiver, 0)).items():
            failing = any(m.attempts > (1 if m.status == SENDING else 0)
                          for m in window)
            receiver = self.receivers.get(name)
            for message in list(window):
                if message.rowid in self.inflight or message.status == SENDING:
                    continue
                if receiver is None:
                    with self.journal.transaction():
                        self.outbox.update_message(
                            message.rowid, status=DROPPED, ended_ns=now,
                            detail="the receiver is no longer in the config")
                    self.log.error("alert.dropped", event_ids=message.event_ids,
                                   message=message.rowid, receiver=name,
                                   reason="the receiver is no longer in the config")
                    window.remove(message)
                    self._again = True
                elif now - message.created_ns >= s.max_age * 1e9:
                    with self.journal.transaction():
                        self._expire(message, receiver, now)
                    window.remove(message)
                    self._again = True
            if receiver is None:
                continue
            if failing:
                self._fallback(name, receiver, now)
            hold = self._holds.get(name, 0)
            if hold > now:
                nxt = hold if nxt is None else min(nxt, hold)
                continue
            busy = sum(1 for r in self._working.values() if r == name)
            # A healthy receiver may have more attempts journaled and waiting for their
            # turn (_enter) than it has at workers: the next job is ready the moment a
            # worker is, and no commit is in its way.
            limit = 1 if failing else AHEAD * per
            for message in window[:1] if failing else window:
                if message.rowid in self.inflight or message.status == SENDING:
                    continue
                if message.next_ns > now:
                    nxt = message.next_ns if nxt is None else min(nxt, message.next_ns)
                    continue
                if (self._stopping or busy >= limit
                        or len(self._working) >= AHEAD * s.max_parallel):
                    break
                if self.peers is not None:  # peering: wait our turn, skip what a peer sent
                    verdict = self.peers.gate(message, now)
                    if verdict.peer is not None:
                        self.peers.skip(message, verdict, now)
                        self._again = True
                        continue
                    if verdict.until_ns > now:
                        nxt = verdict.until_ns if nxt is None else min(nxt, verdict.until_ns)
                        continue
                self._start(message, receiver)
                busy += 1
        return nxt

    def _fallback(self, name: str, receiver: Receiver, now: int) -> None:
        if receiver.fallback is None:
            return
        for message in self.outbox.open_messages(name):
            if (message.escalated_to is None
                    and now - message.created_ns >= receiver.fallback_after * 1e9):
                with self.journal.transaction():
                    self._escalate(message, receiver, now)

    def _kick(self) -> None:
        """A worker came free: look for the next message in this loop turn (no full tick)."""
        if self._kicked or self._wake is None:
            return
        self._kicked = True
        asyncio.get_running_loop().call_soon(self._deliver_now)

    def _deliver_now(self) -> None:
        self._kicked = False
        try:
            self._deliver(time.time_ns())
        except (JournalError, sqlite3.Error) as exc:
            self.log.warning("alerts.journal_failed", error=str(exc), retry_in_s=1.0)
        except Exception:
            self.log.exception("alerts.deliver_crashed")
            self._count("deliver_crashed")
        if self._again:
            self.wake()

    def _expire(self, message: outbox.MessageRow, receiver: Receiver, now: int) -> None:
        detail = (f"gave up after {message.attempts} attempt(s): older than max_age "
                  f"{format_duration(self.settings.max_age)}"
                  + (f"; last error: {message.detail}" if message.detail else ""))
        self.outbox.update_message(message.rowid, status=EXPIRED, ended_ns=now,
                                   detail=detail)
        self._count("expired")
        self.log.error("alert.expired", event_ids=message.event_ids, message=message.rowid,
                       receiver=receiver.name, attempts=message.attempts, detail=detail)
        if receiver.fallback is not None and message.escalated_to is None:
            self._escalate(message, receiver, now)

    def _escalate(self, message: outbox.MessageRow, receiver: Receiver, now: int) -> None:
        assert receiver.fallback is not None
        fallback = self.receivers.get(receiver.fallback)
        if fallback is None:
            return
        items = self.outbox.message_items(message.origin)
        if items:
            rendered = render.compose([render.Item(i.alert, i.fields) for i in items],
                                      fallback.templates.over(items[0].spec), fallback.name,
                                      self.settings.fold_after)
            title, body, kind = rendered.title, rendered.body, rendered.notify_type
        else:
            title, body, kind = message.title, message.body, message.notify_type
        body += (f"\n\n(sent to {fallback.name} because {receiver.name} failed"
                 + (f": {message.detail}" if message.detail else "") + ")")
        new = self.outbox.add_message(fallback.name, message.alert, title, body, kind,
                                      message.event_ids, now, escalated_from=message.rowid,
                                      origin=message.origin, group_key=message.group_key)
        self.outbox.set_escalated(message.rowid, new)
        self._count("escalated")
        self.log.warning("alert.escalated", event_ids=message.event_ids, message=message.rowid,
                         receiver=receiver.name, fallback=fallback.name, fallback_message=new)
        self._again = True

    def _start(self, message: outbox.MessageRow, receiver: Receiver) -> None:
        now = time.time_ns()
        path = os.path.join(self.result_dir,
                            f"m{message.rowid}-a{message.attempts + 1}-{now}.jsonl")
        started = self._journal_op(
            functools.partial(self.outbox.start_attempt, message, path, now))
        self._working[message.rowid] = receiver.name
        self._track(message.rowid, receiver.name,
                    self._attempt(message, receiver, path, started))

    def _track(self, message_id: int, receiver: str, work: Coroutine[Any, Any, None]) -> None:
        """Run one attempt (or the watch of an adopted one) for message ``message_id``."""
        task = asyncio.get_running_loop().create_task(work)
        self.inflight[message_id] = task
        self._receiver_of[message_id] = receiver

        def done(_: asyncio.Task[None]) -> None:
            if self.inflight.get(message_id) is task:
                del self.inflight[message_id]
                self._receiver_of.pop(message_id, None)
            self._working.pop(message_id, None)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                self._count("attempt_crashed")
                self.log.error("alert.attempt_crashed", message=message_id,
                               error=f"{type(exc).__name__}: {exc}")
            self._kick()

        task.add_done_callback(done)

    def _journal_op(self, op: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``op`` in the next group commit (one transaction per loop turn); its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops.append((op, fut))
        if not self._ops_scheduled:
            self._ops_scheduled = True
            # At most one commit per COMMIT_INTERVAL: under a mass delivery each carries
            # the starts and outcomes of many attempts, not one or two.
            wait = self._last_commit + COMMIT_INTERVAL - time.monotonic()
            loop = asyncio.get_running_loop()
            if wait > 0:
                loop.call_later(wait, self._commit_ops)
            else:
                loop.call_soon(self._commit_ops)
        return fut

    def _commit_ops(self) -> None:
        """The group commit: every attempt start and outcome of this loop turn, one COMMIT.

        Each op runs in a savepoint, so a bug in one undoes only its own writes; a
        journal error fails them all (their callers retry).
        """
        self._ops_scheduled = False
        self._turn_index = self._turn_active = None
        ops, self._ops = self._ops, []
        if not ops:
            return
        self._last_commit = time.monotonic()
        done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        db = self.journal.db
        ops = [(op, fut) for op, fut in ops if not fut.cancelled()]  # nobody waits: not done
        if not ops:
            return
        try:
            with self.journal.transaction():
                for op, fut in ops:
                    db.execute("SAVEPOINT alert_op")
                    try:
                        value = op()
                    except sqlite3.Error:
                        raise
                    except Exception as exc:
                        db.execute("ROLLBACK TO alert_op")
                        done.append((fut, None, exc))
                    else:
                        done.append((fut, value, None))
                    db.execute("RELEASE alert_op")
        except (JournalError, sqlite3.Error) as exc:
            error = exc if isinstance(exc, JournalError) else JournalError(str(exc))
            for _, fut in ops:
                if not fut.done():
                    fut.set_exception(error)
            return
        self.commits += 1
        for fut, value, failure in done:
            if fut.done():
                continue
            if failure is not None:
                fut.set_exception(failure)
            else:
                fut.set_result(value)

    async def _attempt(self, message: outbox.MessageRow, receiver: Receiver, path: str,
                       started: asyncio.Future[int]) -> None:
        """One attempt: its start journaled, a worker, the job, the outcome journaled.

        :meth:`_start` queued the start in this loop turn's group commit, with the
        outcomes of the attempts that just ended: one COMMIT for all of them.
        """
        try:
            attempt_id = await started
        except JournalError as exc:
            self.log.warning("alerts.journal_failed", error=str(exc), message=message.rowid,
                             event_ids=message.event_ids)
            await asyncio.sleep(1.0)
            return
        worker: Worker | None = None
        timed_out, note, interrupted = False, "", False
        entered = False
        try:
            await self._enter(receiver.name)
            entered = True
            try:
                worker = await self.pool.acquire()
            except PoolError as exc:
                # Journaled as an attempt that failed (retried later), or at a stop as
                # one that never began (tried again at once after the next start).
                note, interrupted = str(exc), self._stopping
            except Exception as exc:  # a bug: the attempt must still be settled
                self.log.exception("alert.attempt_crashed", message=message.rowid)
                self._count("attempt_crashed")
                note = f"{type(exc).__name__}: {exc}"
            self.log.info("alert.attempt", event_ids=message.event_ids, message=message.rowid,
                          receiver=receiver.name, attempt=message.attempts + 1,
                          urls_done=len(message.done), timeout=receiver.timeout,
                          worker=worker.pid if worker is not None else None)
            if worker is not None:
                timed_out, note = await self._run_job(worker, path, message, receiver)
        finally:
            if worker is not None:
                self.pool.release(worker)
            if entered:
                self._leave(receiver.name)
        # The worker is free for the next message while this outcome waits for its commit.
        self._working.pop(message.rowid, None)
        self._kick()
        await self._settle_until_journaled(attempt_id, message.rowid, receiver.name, path,
                                           timed_out, note, interrupted)

    async def _enter(self, name: str) -> None:
        """Wait until fewer than max_parallel_per_receiver jobs of ``name`` are at workers."""
        while self._sending.get(name, 0) >= self.settings.max_parallel_per_receiver:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._turns.setdefault(name, deque())
            waiters.append(fut)
            try:
                await fut
            finally:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
        self._sending[name] = self._sending.get(name, 0) + 1

    def _leave(self, name: str) -> None:
        left = self._sending.get(name, 1) - 1
        if left > 0:
            self._sending[name] = left
        else:
            self._sending.pop(name, None)
        waiters = self._turns.get(name)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if waiters is not None and not waiters:
            self._turns.pop(name, None)

    async def _run_job(self, worker: Worker, path: str, message: outbox.MessageRow,
                       receiver: Receiver) -> tuple[bool, str]:
        job = {**receiver.job(), "title": message.title, "body": message.body,
               "type": message.notify_type, "skip": message.done}
        if receiver.alertmanager is not None:
            job["alerts"] = self.am.alerts(message.rowid, receiver)
        try:
            if not os.path.isdir(self.result_dir):
                os.makedirs(self.result_dir, mode=0o700, exist_ok=True)
                os.chmod(self.result_dir, 0o700)  # whatever the umask
            # The worker opens it but never creates it: a file this router removed (it
            # gave up on the attempt) is not written again. 0600 whatever the umask: it
            # names receivers and errors.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as exc:
            return False, f"cannot create the result file {path}: {exc.strerror}"
        try:
            return await worker.call({"result": path, "job": job}, receiver.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave the message "sending"
            self.log.exception("alert.attempt_crashed", event_ids=message.event_ids,
                               message=message.rowid)
            self._count("attempt_crashed")
            await worker.kill()
            return False, f"{type(exc).__name__}: {exc}"

    async def _settle_until_journaled(self, attempt_id: int, message_id: int, receiver: str,
                                      path: str | None, timed_out: bool, note: str,
                                      interrupted: bool = False) -> None:
        """The outcome must reach the journal: the result file stays until it has."""
        while True:
            try:
                settled = await self._journal_op(functools.partial(
                    self._settle_rows, attempt_id, message_id, receiver, path, timed_out, note,
                    interrupted))
            except (JournalError, sqlite3.Error) as exc:
                self.log.warning("alerts.journal_failed", error=str(exc), message=message_id,
                                 retry_in_s=1.0)
                await asyncio.sleep(1.0)
                continue
            except Exception:
                self.log.exception("alert.settle_crashed", message=message_id)
                self._count("settle_crashed")
                await asyncio.sleep(5.0)
                continue
            if settled is not None:
                self._settled(settled, path)
            return

    def _settle(self, attempt_id: int, message_id: int, receiver_name: str,
                path: str | None, timed_out: bool, note: str, interrupted: bool = False) -> None:
        """Settle now, in a transaction of its own (at start-up)."""
        with self.journal.transaction():
            settled = self._settle_rows(attempt_id, message_id, receiver_name, path, timed_out,
                                        note, interrupted)
        if settled is not None:
            self._settled(settled, path)

    def _settle_rows(self, attempt_id: int, message_id: int, receiver_name: str,
                     path: str | None, timed_out: bool, note: str,
                     interrupted: bool = False) -> _Settled | None:
        """Journal an attempt's outcome (inside the caller's transaction)."""
        message = self.outbox.message(message_id)
        if message is None:
            return None
        receiver = self.receivers.get(receiver_name)
        secrets = receiver.secrets if receiver is not None else frozenset()
        res = attempt.read_results(path)
        v = attempt.verdict(res, message.done, timed_out, note, interrupted)
        urls = [{**u, "error": scrub(str(u.get("error", "")), secrets)} for u in v.urls]
        error = scrub(v.error, secrets)
        now = time.time_ns()
        delay = 0.0
        hold_ns = 0
        self.outbox.finish_attempt(attempt_id, v.status, urls, error, now)
        if v.status == OK:
            self.outbox.update_message(message_id, status=SENT, done=v.done,
                                       ended_ns=now,
                                       detail=f"delivered on attempt {message.attempts}")
            if self.peers is not None:  # peering: the notification log, pushed to peers
                self.peers.sent(message, now)
        else:
            if v.status == INTERRUPTED and res.planned is None:
                delay = 0.0
            else:
                delay = outbox.backoff(message.attempts, self.settings.retry_initial,
                                       self.settings.retry_max)
            if v.slow_down:
                # "Slow down": not before its Retry-After (else the usual backoff), and
                # the whole receiver waits as long, not just this message.
                if v.retry_after is not None:
                    delay = max(v.retry_after, MIN_SLOW_DOWN)
                delay = min(delay, self.settings.max_age)
                hold_ns = now + int(delay * 1e9)
                self.outbox.hold(receiver_name, hold_ns)
            self.outbox.update_message(message_id, status=PENDING,
                                       next_ns=now + int(delay * 1e9), done=v.done,
                                       detail=error)
        return _Settled(message, receiver_name, v, urls, error, delay, hold_ns)

    def _settled(self, s: _Settled, path: str | None) -> None:
        """After the outcome is committed: the file goes, the log line and the watchers."""
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        v, message = s.verdict, s.message
        shown = [{"url": u["url"], "ok": u["ok"], **({"error": u["error"]} if not u["ok"]
                                                     else {})} for u in s.urls]
        self._count(f"attempt_{v.status}")
        fields = {"event_ids": message.event_ids, "message": message.rowid,
                  "receiver": s.receiver, "attempt": message.attempts, "urls": shown}
        if v.status == OK:
            self.log.info("alert.delivered", **fields)
        else:
            self.log.warning("alert.attempt_failed", status=v.status, error=s.error,
                             retry_in_s=s.delay, **fields)
        if s.hold_ns:
            self._holds[s.receiver] = max(self._holds.get(s.receiver, 0), s.hold_ns)
            self._count("slow_down")
            self.log.warning("alert.slow_down", receiver=s.receiver, message=message.rowid,
                             retry_after=v.retry_after, hold_s=round(s.delay, 3))
        self.publish("alert", {**fields, "status": v.status, "title": message.title})
        if v.status == OK:
            self._kick()
        else:
            self.wake()  # a retry time to sleep towards, perhaps a fallback

    def _adopt(self) -> None:
        """Attempts that were running when the router stopped: watch or settle them.

        A worker of the previous router still holding the attempt's result file is
        finishing it: it is watched (and killed at the attempt's deadline), then
        its outcome is read. Otherwise the file already says all that was done.
        """
        for row in self.outbox.running_attempts():
            receiver = self.receivers.get(row.receiver)
            timeout = receiver.timeout if receiver is not None else self.settings.timeout
            deadline = row.started_ns + int((timeout + attempt.GRACE) * 1e9)
            path = row.result_path
            res = attempt.read_results(path)
            if path and attempt.locked(path):
                watch = attempt.watch_locked(path, row.started_ns, timeout + attempt.GRACE)
            elif path and res.pid is not None and attempt.sender_alive(res.pid, path):
                watch = attempt.watch(res.pid, path, deadline)  # a one-shot sender
            else:
                self._settle(row.rowid, row.message, row.receiver, path, False,
                             "the router stopped during this attempt", interrupted=True)
                continue
            message = self.outbox.message(row.message)
            self.log.info("alert.adopted", event_ids=message.event_ids if message else [],
                          message=row.message, receiver=row.receiver, pid=res.pid,
                          attempt=row.attempt)
            self._working[row.message] = row.receiver
            self._track(row.message, row.receiver, self._watch(row, watch))

    async def _watch(self, row: outbox.AttemptRow,
                     watch: Coroutine[Any, Any, tuple[bool, str]]) -> None:
        timed_out, note = await watch
        self._working.pop(row.message, None)
        await self._settle_until_journaled(row.rowid, row.message, row.receiver,
                                           row.result_path, timed_out, note)

    # -- the control surface ----------------------------------------------------------------

    def command(self, op: str, msg: dict[str, Any]) -> dict[str, Any]:
        """Answer a router op; WireError for a request that cannot be served."""
        now = time.time_ns()
        try:
            if op == "silence_add":
                matchers = msg.get("matchers")
                if not isinstance(matchers, list) or not all(isinstance(m, str)
                                                             for m in matchers):
                    raise WireError("silence_add 'matchers' must be a list of strings")
                duration = msg.get("duration_s")
                if (isinstance(duration, bool) or not isinstance(duration, int | float)
                        or not -1e12 < duration < 1e12):
                    raise WireError("silence_add 'duration_s' must be a number of seconds")
                reason = msg.get("reason", "")
                by = msg.get("by", "")
                if not isinstance(reason, str) or not isinstance(by, str):
                    raise WireError("silence_add 'reason' and 'by' must be strings")
                silence = self.silences.add(matchers, float(duration), reason, by)
                if self.peers is not None:  # peering: every router honours it
                    self.peers.changed()
                self.log.info("silence.added", silence=silence.id,
                              matchers=[m.text for m in silence.matchers], reason=reason,
                              by=by, until_ns=silence.ends_ns)
                return {"silence": silence.to_dict(), "matching": self._matching(silence)}
            if op == "silence_list":
                include_old = msg.get("all", False) is True
                return {"silences": [s.to_dict(now) for s in self.silences.list(include_old)]}
            if op == "silence_expire":
                ident = msg.get("id")
                if type(ident) is not int or not 0 < ident < 2**63:
                    raise WireError("silence_expire 'id' must be a silence number")
                silence = self.silences.expire(ident)
                if self.peers is not None:
                    self.peers.changed()
                self.log.info("silence.expired", silence=silence.id)
                return {"silence": silence.to_dict(now)}
            if op == "alerts":
                return {"alerts": self.info()}
        except SilenceError as exc:
            raise WireError(str(exc)) from None
        raise WireError(f"unknown op {op[:40]!r}")

    def _matching(self, silence: Silence) -> list[dict[str, str]]:
        """The current states a new silence covers: a typo shows as an empty list."""
        out = []
        for (host, kind, name, vs), ks in self._tracker().states.items():
            values = {"host": host, "kind": kind, "name": name, "vs": vs, "state": ks.state,
                      "subject": f"{name} in {vs}" if vs else name}
            if silence.matches(values):
                out.append({"host": host, "kind": kind, "name": name, "vs": vs,
                            "state": ks.state})
        return out[:100]

    def info(self) -> dict[str, Any]:
        try:
            counts = self.outbox.counts()
        except sqlite3.Error:
            counts = {}
        return {"attempts_running": len(self.inflight), "outcomes": dict(self.counts),
                "workers": self.pool.info(), "commits": self.commits,
                "silences_active": len([s for s in self.silences.list()
                                        if s.active(time.time_ns())]), **counts}
