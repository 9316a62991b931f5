"""The alert engine inside the router: queue, group, compose, deliver, retry, escalate.

Small stages, each in its own module and testable alone, joined here:

    alert action ─▶ flap ─▶ repeat ─▶ silence ─▶ outbox item (waiting, group_wait)
                                                        │ group due
                                                        ▼
    timers (stable again, repeat_interval) ───▶ compose one message per group
                                                        │ oldest first per receiver
                                                        ▼
                              attempt (sender process, bounded) ─▶ sent | retry with
                              backoff | fallback receiver | expired at max_age

:meth:`AlertEngine.enqueue` is what the ``alert`` action calls, inside the
executor (so alerts keep the order of their key); it only writes rows and never
waits for a delivery. Everything after it runs in :meth:`AlertEngine.run`, a
background task of the router. Every state is a row in the journal first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from knotify.actions.base import OK, SILENCED, SKIPPED, ActionContext, Outcome
from knotify.alerts import attempt, flap, grouping, outbox, render, repeat
from knotify.alerts.outbox import Outbox, StreamRow
from knotify.alerts.receivers import AlertSettings, Receiver
from knotify.alerts.redact import scrub
from knotify.alerts.silence import Silence, SilenceError, SilenceStore
from knotify.alerts.stream import Stream
from knotify.event import Event, WireError
from knotify.journal import JournalError
from knotify.templates import event_fields
from knotify.tracker import NOTICE, TRANSITION, KeyState, Tracker, Transition
from knotify.units import format_duration

if TYPE_CHECKING:
    from knotify.actions.alert import AlertAction
    from knotify.config import Config
    from knotify.journal import Journal

#: Router ops this engine answers.
OPS = ("silence_add", "silence_list", "silence_expire", "alerts")
MAX_SLEEP = 1.0


def _clock(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%H:%M:%S")


class AlertEngine:
    def __init__(self, config: Config, journal: Journal, tracker: Callable[[], Tracker],
                 log: Any, publish: Callable[[str, dict[str, Any]], None]) -> None:
        self.config = config
        self.journal = journal
        self._tracker = tracker
        self.log = log
        self.publish = publish
        self.outbox = Outbox(journal)
        self.silences = SilenceStore(journal)
        self.result_dir = os.path.join(os.path.dirname(os.path.abspath(config.journal)),
                                       "outbox")
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.counts: dict[str, int] = {}
        self._wake: asyncio.Event | None = None
        self._again = False
        self._stopping = False
        self._adopted = False
        #: Called at every turn of :meth:`run` (the router's supervisor watches it).
        self.beat: Callable[[], None] = lambda: None

    @property
    def settings(self) -> AlertSettings:
        return self.config.alerts

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- intake: the alert action --------------------------------------------------------

    def enqueue(self, ctx: ActionContext, action: AlertAction) -> Outcome:
        """Queue the alert for one event (called by the action, in the key's order)."""
        ev, tr = ctx.event, ctx.transition
        run = ctx.extra.get("run")
        stream_id = f"{ctx.rule}#{ctx.extra.get('index', 0)}"
        now = time.time_ns()
        s = self.settings
        fields = dict(ctx.fields)
        with self.journal.transaction():
            if run is not None and self.outbox.has_run(run):
                return Outcome(OK, detail="already queued before the router restarted")
            row = self.outbox.stream(stream_id, ev.key) or StreamRow(
                stream_id, ev.key, [], {}, None, None, {}, Stream())
            row.receivers = list(action.receivers)
            row.spec = dict(action.spec)
            row.repeat_s = action.repeat_s
            stream = row.state
            is_transition = tr.cls == TRANSITION
            # What this alert says: the state, or for news that is not a change (a new
            # priority, MASTER_RX_LOWER_PRI) the news itself, so the next news is not
            # taken for a repeat of this one.
            said = tr.state if tr.cls != NOTICE else f"{tr.state}/{ev.state}/{ev.prio}"
            count = 0
            if s.flap.enabled and is_transition and not stream.flapping:
                count = self.outbox.transitions_in_window(
                    ev.id, ev.ts_ns - int(s.flap.window_s * 1e9))
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
                    self._add_item(row, run, ev.id, receiver, render.FIRING, outbox.SUPPRESSED,
                                   reason, fields, now)
                self.outbox.put_stream(row)
                outcome = Outcome(SKIPPED, detail=reason)
            else:
                repeat.queued(stream, said, tr.epoch, now)
                row.event_id = ev.id
                row.fields = fields
                queued, silenced = self._queue(row, run, ev.id, alert, fields, now)
                self.outbox.put_stream(row)
                outcome = self._outcome(alert, queued, silenced)
        self._count(outcome.status)
        ctx.log.info("alert.queued", alert=alert, status=outcome.status, stream=stream_id,
                     receivers=list(action.receivers), detail=outcome.detail)
        self.wake()
        return outcome

    def _outcome(self, alert: str, queued: list[str],
                 silenced: list[tuple[str, Silence]]) -> Outcome:
        if not queued:
            return Outcome(SILENCED, detail="; ".join(
                f"{name}: {s.describe()}" for name, s in silenced))
        detail = f"{alert} alert queued for {', '.join(queued)}"
        if self.settings.group_wait:
            detail += f" (grouped for {format_duration(self.settings.group_wait)})"
        if silenced:
            detail += "; silenced for " + ", ".join(
                f"{name} ({s.describe()})" for name, s in silenced)
        return Outcome(OK, detail=detail)

    def _repeat_policy(self, repeat_s: float | None) -> repeat.RepeatPolicy:
        base = self.settings.repeat
        if repeat_s is None:
            return base
        return repeat.RepeatPolicy(repeat_s, base.states)

    def _add_item(self, row: StreamRow, run: int | None, event_id: str, receiver: str,
                  alert: str, status: str, detail: str | None, fields: dict[str, str],
                  now: int) -> int:
        key = grouping.group_key(receiver, fields, self.settings.group_by)
        return self.outbox.add_item(
            run=run, event_id=event_id, receiver=receiver, stream=row.stream_id, alert=alert,
            status=status, detail=detail, group_key=key, fields=fields, spec=row.spec,
            created_ns=now, due_ns=now + int(self.settings.group_wait * 1e9))

    def _queue(self, row: StreamRow, run: int | None, event_id: str, alert: str,
               fields: dict[str, str], now: int
               ) -> tuple[list[str], list[tuple[str, Silence]]]:
        queued: list[str] = []
        silenced: list[tuple[str, Silence]] = []
        for receiver in row.receivers:
            match = self.silences.match({**fields, "receiver": receiver}, now)
            if match is not None:
                silenced.append((receiver, match))
                self._add_item(row, run, event_id, receiver, alert, outbox.SILENCED,
                               match.describe(), fields, now)
            else:
                queued.append(receiver)
                self._add_item(row, run, event_id, receiver, alert, outbox.WAITING, None,
                               fields, now)
        return queued, silenced

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
        dues = [self._timers(now), self._compose(now), self._deliver(now)]
        if self._again:
            self._again = False
            return 0.0
        nxt = min((d for d in dues if d is not None), default=None)
        if nxt is None:
            return MAX_SLEEP
        return max(0.0, min(MAX_SLEEP, (nxt - time.time_ns()) / 1e9))

    async def stop(self, timeout: float) -> None:
        """Let running attempts finish within ``timeout``; the rest are adopted at restart."""
        self._stopping = True
        tasks = list(self.inflight.values())
        if not tasks:
            return
        _, still = await asyncio.wait(tasks, timeout=timeout)
        for task in still:
            task.cancel()
        if still:
            await asyncio.gather(*still, return_exceptions=True)
            self.log.info("alerts.left_running", attempts=len(still),
                          detail="their senders finish on their own; read at the next start")

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
        queued, silenced = self._queue(row, None, current.event_id, render.STABLE, fields, now)
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
        queued, silenced = self._queue(row, None, event_id, render.REPEAT, fields, now)
        self.outbox.put_stream(row)
        self.log.info("alert.repeat", event_id=event_id, stream=row.stream_id,
                      host=row.key[0], name=row.key[2], state=current.state,
                      receivers=queued, silenced=[n for n, _ in silenced] or None)
        self._again = True

    # -- grouping: compose due groups into messages ----------------------------------------

    def _compose(self, now: int) -> int | None:
        waiting = self.outbox.waiting()
        if not waiting:
            return None
        for rowids in grouping.due_groups(waiting, now):
            with self.journal.transaction():
                self._compose_group(rowids, now)
        return grouping.next_due(self.outbox.waiting())

    def _compose_group(self, rowids: list[int], now: int) -> None:
        items = self.outbox.items(rowids)
        if not items:
            return
        name = items[0].receiver
        receiver = self.config.receivers.get(name)
        event_ids = list(dict.fromkeys(i.event_id for i in items))
        if receiver is None:
            self.outbox.set_items(rowids, outbox.DROPPED,
                                  f"receiver {name!r} is no longer in the config")
            self.log.error("alert.dropped", event_ids=event_ids, receiver=name,
                           reason="the receiver is no longer in the config")
            return
        keep = []
        for item in items:
            match = self.silences.match({**item.fields, "receiver": name}, now)
            if match is not None:
                self.outbox.set_items([item.rowid], outbox.SILENCED, match.describe())
                self.log.info("alert.silenced", event_id=item.event_id, receiver=name,
                              silence=match.id)
            else:
                keep.append(item)
        if not keep:
            return
        rendered = render.compose(
            [render.Item(i.alert, i.fields) for i in keep],
            receiver.templates.over(keep[0].spec), receiver.name)
        kinds = {i.alert for i in keep}
        alert = kinds.pop() if len(kinds) == 1 else "group"
        ids = list(dict.fromkeys(i.event_id for i in keep))
        message = self.outbox.add_message(name, alert, rendered.title, rendered.body,
                                          rendered.notify_type, ids, now)
        self.outbox.set_items([i.rowid for i in keep], outbox.COMPOSED, message=message)
        self.log.info("alert.composed", event_ids=ids, message=message, receiver=name,
                      alert=alert, items=len(keep), title=rendered.title)

    # -- delivery ---------------------------------------------------------------------------

    def _deliver(self, now: int) -> int | None:
        nxt: int | None = None
        failing: set[str] = set()
        for head in self.outbox.heads():
            name = head.receiver
            if head.attempts > 0 and not (head.status == outbox.SENDING and head.attempts == 1):
                failing.add(name)
            if name in self.inflight or head.status == outbox.SENDING:
                continue
            receiver = self.config.receivers.get(name)
            if receiver is None:
                with self.journal.transaction():
                    self.outbox.update_message(head.rowid, status=outbox.DROPPED, ended_ns=now,
                                               detail="the receiver is no longer in the config")
                self.log.error("alert.dropped", event_ids=head.event_ids, message=head.rowid,
                               receiver=name, reason="the receiver is no longer in the config")
                self._again = True
                continue
            if now - head.created_ns >= self.settings.max_age * 1e9:
                with self.journal.transaction():
                    self._expire(head, receiver, now)
                self._again = True
                continue
            if head.next_ns > now:
                nxt = head.next_ns if nxt is None else min(nxt, head.next_ns)
                continue
            if self._stopping or len(self.inflight) >= self.settings.max_parallel:
                continue
            self._start(head, receiver)
        for name in failing:
            receiver = self.config.receivers.get(name)
            if receiver is None or receiver.fallback is None:
                continue
            for message in self.outbox.open_messages(name):
                if (message.escalated_to is None
                        and now - message.created_ns >= receiver.fallback_after * 1e9):
                    with self.journal.transaction():
                        self._escalate(message, receiver, now)
        return nxt

    def _expire(self, message: outbox.MessageRow, receiver: Receiver, now: int) -> None:
        detail = (f"gave up after {message.attempts} attempt(s): older than max_age "
                  f"{format_duration(self.settings.max_age)}"
                  + (f"; last error: {message.detail}" if message.detail else ""))
        self.outbox.update_message(message.rowid, status=outbox.EXPIRED, ended_ns=now,
                                   detail=detail)
        self._count("expired")
        self.log.error("alert.expired", event_ids=message.event_ids, message=message.rowid,
                       receiver=receiver.name, attempts=message.attempts, detail=detail)
        if receiver.fallback is not None and message.escalated_to is None:
            self._escalate(message, receiver, now)

    def _escalate(self, message: outbox.MessageRow, receiver: Receiver, now: int) -> None:
        assert receiver.fallback is not None
        fallback = self.config.receivers.get(receiver.fallback)
        if fallback is None:
            return
        items = self.outbox.message_items(message.origin)
        if items:
            rendered = render.compose([render.Item(i.alert, i.fields) for i in items],
                                      fallback.templates.over(items[0].spec), fallback.name)
            title, body, kind = rendered.title, rendered.body, rendered.notify_type
        else:
            title, body, kind = message.title, message.body, message.notify_type
        body += (f"\n\n(sent to {fallback.name} because {receiver.name} failed"
                 + (f": {message.detail}" if message.detail else "") + ")")
        new = self.outbox.add_message(fallback.name, message.alert, title, body, kind,
                                      message.event_ids, now, escalated_from=message.rowid,
                                      origin=message.origin)
        self.outbox.set_escalated(message.rowid, new)
        self._count("escalated")
        self.log.warning("alert.escalated", event_ids=message.event_ids, message=message.rowid,
                         receiver=receiver.name, fallback=fallback.name, fallback_message=new)
        self._again = True

    def _start(self, message: outbox.MessageRow, receiver: Receiver) -> None:
        self._track(receiver.name, self._attempt(message, receiver))

    def _track(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run one attempt for receiver ``name``; the receiver is busy until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self.inflight[name] = task

        def done(_: asyncio.Task[None]) -> None:
            if self.inflight.get(name) is task:
                del self.inflight[name]
            self.wake()

        task.add_done_callback(done)

    async def _attempt(self, message: outbox.MessageRow, receiver: Receiver) -> None:
        if not os.path.isdir(self.result_dir):
            os.makedirs(self.result_dir, mode=0o700, exist_ok=True)
            os.chmod(self.result_dir, 0o700)  # whatever the umask
        now = time.time_ns()
        path = os.path.join(self.result_dir,
                            f"m{message.rowid}-a{message.attempts + 1}-{now}.jsonl")
        try:
            with self.journal.transaction():
                attempt_id = self.outbox.start_attempt(message, path, now)
        except JournalError as exc:
            self.log.warning("alerts.journal_failed", error=str(exc), message=message.rowid,
                             event_ids=message.event_ids)
            await asyncio.sleep(1.0)
            return
        self.log.info("alert.attempt", event_ids=message.event_ids, message=message.rowid,
                      receiver=receiver.name, attempt=message.attempts + 1,
                      urls_done=len(message.done), timeout=receiver.timeout)
        job = {**receiver.job(), "title": message.title, "body": message.body,
               "type": message.notify_type, "skip": message.done}
        try:
            timed_out, note = await attempt.run_sender(job, path, receiver.timeout)
        except Exception as exc:  # a bug here must not leave the receiver stuck "sending"
            self.log.exception("alert.attempt_crashed", event_ids=message.event_ids,
                               message=message.rowid)
            timed_out, note = False, f"{type(exc).__name__}: {exc}"
        await self._settle_until_journaled(attempt_id, message.rowid, receiver.name, path,
                                           timed_out, note)

    async def _settle_until_journaled(self, attempt_id: int, message_id: int, receiver: str,
                                      path: str | None, timed_out: bool, note: str) -> None:
        """The outcome must reach the journal: the result file stays until it has."""
        while True:
            try:
                self._settle(attempt_id, message_id, receiver, path, timed_out, note)
                return
            except (JournalError, sqlite3.Error) as exc:
                self.log.warning("alerts.journal_failed", error=str(exc), message=message_id,
                                 retry_in_s=1.0)
                await asyncio.sleep(1.0)

    def _settle(self, attempt_id: int, message_id: int, receiver_name: str,
                path: str | None, timed_out: bool, note: str, interrupted: bool = False) -> None:
        message = self.outbox.message(message_id)
        if message is None:
            return
        receiver = self.config.receivers.get(receiver_name)
        secrets = receiver.secrets if receiver is not None else frozenset()
        res = attempt.read_results(path)
        v = attempt.verdict(res, message.done, timed_out, note, interrupted)
        urls = [{**u, "error": scrub(str(u.get("error", "")), secrets)} for u in v.urls]
        error = scrub(v.error, secrets)
        now = time.time_ns()
        with self.journal.transaction():
            self.outbox.finish_attempt(attempt_id, v.status, urls, error, now)
            if v.status == attempt.OK:
                self.outbox.update_message(message_id, status=outbox.SENT, done=v.done,
                                           ended_ns=now,
                                           detail=f"delivered on attempt {message.attempts}")
            else:
                delay = 0.0 if v.status == attempt.INTERRUPTED and res.planned is None else \
                    outbox.backoff(message.attempts, self.settings.retry_initial,
                                   self.settings.retry_max)
                self.outbox.update_message(message_id, status=outbox.PENDING,
                                           next_ns=now + int(delay * 1e9), done=v.done,
                                           detail=error)
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        shown = [{"url": u["url"], "ok": u["ok"], **({"error": u["error"]} if not u["ok"]
                                                     else {})} for u in urls]
        self._count(f"attempt_{v.status}")
        fields = {"event_ids": message.event_ids, "message": message_id,
                  "receiver": receiver_name, "attempt": message.attempts, "urls": shown}
        if v.status == attempt.OK:
            self.log.info("alert.delivered", **fields)
        else:
            retry = 0.0 if v.status == attempt.INTERRUPTED and res.planned is None else \
                outbox.backoff(message.attempts, self.settings.retry_initial,
                               self.settings.retry_max)
            self.log.warning("alert.attempt_failed", status=v.status, error=error,
                             retry_in_s=retry, **fields)
        self.publish("alert", {**fields, "status": v.status, "title": message.title})
        self.wake()

    def _adopt(self) -> None:
        """Attempts that were running when the router stopped: watch or settle them."""
        for row in self.outbox.running_attempts():
            res = attempt.read_results(row.result_path)
            if (res.pid is not None and row.result_path
                    and attempt.sender_alive(res.pid, row.result_path)):
                receiver = self.config.receivers.get(row.receiver)
                timeout = receiver.timeout if receiver is not None else self.settings.timeout
                deadline = row.started_ns + int((timeout + attempt.GRACE) * 1e9)
                message = self.outbox.message(row.message)
                self.log.info("alert.adopted", event_ids=message.event_ids if message else [],
                              message=row.message, receiver=row.receiver, pid=res.pid,
                              attempt=row.attempt)
                self._track(row.receiver, self._watch(row, res.pid, deadline))
                continue
            self._settle(row.rowid, row.message, row.receiver, row.result_path, False,
                         "the router stopped during this attempt", interrupted=True)

    async def _watch(self, row: outbox.AttemptRow, pid: int, deadline_ns: int) -> None:
        assert row.result_path is not None
        timed_out, note = await attempt.watch(pid, row.result_path, deadline_ns)
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
                "silences_active": len([s for s in self.silences.list()
                                        if s.active(time.time_ns())]), **counts}
