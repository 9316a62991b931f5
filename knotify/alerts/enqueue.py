"""The alert action's way in: flap control, then repeat suppression, then an item per receiver.

:meth:`Enqueue.enqueue` is what the ``alert`` action calls, inside the executor
(in the alert lane of its key: in order among the key's alerts, never behind its
execs). It only writes rows, in the engine's group commit, and never waits for a
delivery.
"""

from __future__ import annotations

import functools
from collections import deque

from knotify.actions.base import ActionContext, AlertRequest
from knotify.alerts import flap, render, repeat
from knotify.alerts.admit import Inhibited, Silenced, add_item, admit
from knotify.alerts.commit import GroupCommit
from knotify.alerts.core import Core
from knotify.alerts.stream import Stream
from knotify.outcome import Outcome
from knotify.store.outbox import StreamRow
from knotify.templates import iso_time
from knotify.units import format_duration
from knotify.vocab import NOTICE, OK, SILENCED, SKIPPED, SUPPRESSED, TRANSITION


class Enqueue:
    def __init__(self, core: Core, commit: GroupCommit) -> None:
        self.core = core
        self.commit = commit
        #: When the latest alerts were queued (ns): how many workers to warm up.
        self._recent: deque[int] = deque(maxlen=64)

    async def enqueue(self, ctx: ActionContext, action: AlertRequest) -> Outcome:
        """Queue the alert for one event (called by the action, in the key's order).

        Its rows join the engine's next group commit: the alerts of a mass failover,
        queued in the same loop turn, share one COMMIT instead of one each.
        """
        now = self.core.clock.time_ns()
        outcome, alert = await self.commit.op(functools.partial(self.rows, ctx, action, now))
        return self._queued(ctx, action, outcome, alert, now)

    def _queued(self, ctx: ActionContext, action: AlertRequest, outcome: Outcome,
                alert: str | None, now: int) -> Outcome:
        """After the commit: count, log, warm workers up, wake the loop."""
        core = self.core
        core.count(outcome.status)
        if outcome.status == OK and alert is not None:
            self._warm(now, len(action.receivers))
        ctx.log.info("alert.queued", alert=alert, status=outcome.status,
                     stream=f"{ctx.rule}#{ctx.index}",
                     receivers=list(action.receivers), detail=outcome.detail)
        # Its group is due in group_wait: wake the loop only if it would sleep past that
        # (a mass failover queues hundreds of alerts; a tick for each loop turn is waste).
        if now + int(core.settings.group_wait * 1e9) < core.next_tick_ns:
            core.wake()
        return outcome

    def rows(self, ctx: ActionContext, action: AlertRequest,
             now: int) -> tuple[Outcome, str | None]:
        """The outbox rows of one alert (inside the caller's transaction)."""
        core = self.core
        ev, tr = ctx.event, ctx.transition
        run = ctx.run
        stream_id = f"{ctx.rule}#{ctx.index}"
        s = core.settings
        fields = dict(ctx.fields)
        if run is not None and core.outbox.has_run(run):
            return Outcome(OK, detail="already queued before the router restarted"), None
        row = core.outbox.stream(stream_id, ev.key) or StreamRow(
            stream_id, ev.key, [], {}, None, None, {}, Stream())
        stream = row.state
        ends_only = self._ends_only(ctx)
        if stream.alerted_state != tr.prev_state and ends_only:
            # The end of an incident goes to the rule that paged for it, and only then.
            return Outcome(SKIPPED, detail=f"nothing was alerted for {tr.prev_state}, so its "
                           "end is not news"), None
        if ends_only:  # it says the paged state ended; its new state is paged by nobody
            fields[render.ENDS_FIELD] = tr.prev_state
        else:
            fields.pop(render.ENDS_FIELD, None)
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
            count = core.journal.transitions_in_window(
                ev.id, max(ev.ts_ns - int(s.flap.window_s * 1e9),
                           core.rule_since.since(stream_id)))
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
                      f"{iso_time(stream.flap_since_ns or now)}); held back until it is "
                      f"stable for {format_duration(s.flap.stable_s)}")
        else:
            policy = core.repeat_policy(row.repeat_s)
            verdict = repeat.on_event(stream, said, tr.epoch, now, policy)
            if verdict == repeat.SUPPRESS:
                reason = (f"suppressed: {tr.state} was already alerted at "
                          f"{iso_time(stream.last_ns or now)}")
                if policy.interval_s > 0 and tr.state in policy.states:
                    reason += f"; repeated every {format_duration(policy.interval_s)}"
            elif verdict == repeat.REPEAT:
                alert = render.REPEAT
                current = core.tracker.states.get(ev.key)
                since = format_duration(max(0, now - current.since_ns) / 1e9) \
                    if current is not None else ""
                fields["change"] = render.change_text(alert, fields, since=since)
            else:
                alert = render.FIRING
                fields["change"] = render.change_text(alert, fields)
        if alert is None:
            for receiver in row.receivers:
                add_item(core, row, run, ev.id, receiver, render.FIRING, SUPPRESSED, reason,
                         fields, now)
            core.outbox.put_stream(row)
            outcome = Outcome(SKIPPED, detail=reason)
        else:
            repeat.queued(stream, said, tr.epoch, now)
            row.event_id = ev.id
            row.fields = fields
            queued, silenced, inhibited = admit(core, row, run, ev.id, alert, fields, now)
            core.outbox.put_stream(row)
            outcome = self._outcome(alert, queued, silenced, inhibited)
        return outcome, alert

    def _ends_only(self, ctx: ActionContext) -> bool:
        """The rule fired for this event only because it ends an incident (send_resolved)."""
        rule = next((r for r in self.core.engine_settings.rules if r.id == ctx.rule), None)
        return rule is not None and rule.send_resolved and rule.ends_only(ctx.event,
                                                                          ctx.transition)

    def _warm(self, now: int, receivers: int) -> None:
        """Alerts are queued: have workers ready by the time their group is due.

        As many as alerts were queued within about a group_wait, up to what the
        receivers may use at once (and the pool size).
        """
        s = self.core.settings
        self._recent.append(now)
        since = now - int((s.group_wait + 1.0) * 1e9)
        recent = sum(1 for t in self._recent if t >= since)
        self.core.pool.warm(min(recent, receivers * s.max_parallel_per_receiver))

    def _outcome(self, alert: str, queued: list[str], silenced: Silenced,
                 inhibited: Inhibited) -> Outcome:
        if not queued and not silenced:
            return Outcome(SKIPPED, detail="; ".join(
                f"{name}: {i.describe()}" for name, i in inhibited))
        if not queued:
            return Outcome(SILENCED, detail="; ".join(
                [f"{name}: {s.describe()}" for name, s in silenced]
                + [f"{name}: {i.describe()}" for name, i in inhibited]))
        detail = f"{alert} alert queued for {', '.join(queued)}"
        group_wait = self.core.settings.group_wait
        if group_wait:
            detail += f" (grouped for {format_duration(group_wait)})"
        if silenced:
            detail += "; silenced for " + ", ".join(
                f"{name} ({s.describe()})" for name, s in silenced)
        if inhibited:
            detail += "; " + ", ".join(f"{name} {i.describe()}" for name, i in inhibited)
        return Outcome(OK, detail=detail)
