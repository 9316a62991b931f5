"""Journal → classify → dispatch: what happens to every batch of events, from any source.

:meth:`Intake.ingest` journals a batch in one transaction (group commit), classifies
each new event with the state tracker, journals the runs its rules fire and hands them
to the executor; instant actions with nothing of their key ahead run inline, before the
commit. Nothing is acked (by the caller) before the commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from knotify import log as logmod
from knotify.errors import JournalError
from knotify.executor import Run
from knotify.intake.keys import KEYED_KINDS, KeyBounds
from knotify.intake.settings import IntakeSettings
from knotify.rules import fired
from knotify.tracker import Tracker, Transition
from knotify.vocab import DELETED, INVALID_CLASS, STALE, TRANSITION

if TYPE_CHECKING:
    from knotify.cluster.monitor import ClusterMonitor
    from knotify.endpoints import Publisher
    from knotify.event import Event
    from knotify.executor import Executor
    from knotify.outcome import Outcome
    from knotify.store.events import EventStore
    from knotify.store.outbox import Outbox

PRUNE_EVERY = 10_000


def describe(ev: Event, tr: Transition, fields: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """What describes an event in the log and to watchers (added to ``fields``)."""
    own = {"event_id": ev.id, "host": ev.host, "kind": ev.kind, "name": ev.name,
           "state": ev.state, "prio": ev.prio, "class": tr.cls, "seq": ev.seq,
           "source": ev.source}
    if fields is None:
        fields = own
    else:
        fields.update(own)
    if ev.vs:
        fields["vs"] = ev.vs
    if ev.extra.get("detail"):
        fields["detail"] = str(ev.extra["detail"])  # what a CLUSTER or PEER event means
    return fields


class Intake:
    """The one way in for events: every source and socket hands its batches here."""

    def __init__(self, settings: IntakeSettings, tracker: Tracker, journal: EventStore,
                 outbox: Outbox, executor: Executor, cluster: ClusterMonitor | None,
                 publisher: Publisher, log: Any, stats: dict[str, int],
                 on_config_problem: Callable[[Event, str], None]) -> None:
        self.settings = settings
        #: The state table (one object for the router's life: others hold it too).
        self.tracker = tracker
        self.journal = journal
        self.outbox = outbox
        self.executor = executor
        self.cluster = cluster
        self.publisher = publisher
        self.log = log
        self.stats = stats
        #: An event whose hook could not read the config it was given (acked live).
        self.on_config_problem = on_config_problem
        self.keys = KeyBounds(settings, journal, tracker, log, stats)
        #: Refusing new events (the spool is the buffer) until actions catch up.
        self.shedding = False
        self._journal_failing = False
        self._since_prune = 0
        for key in ("batches", "journaled", "duplicates", "journal_errors", "clock_ahead",
                    "largest_batch", "keys_refused", "keys_forgotten", "shed_periods"):
            stats.setdefault(key, 0)

    def apply(self, settings: IntakeSettings) -> None:
        """A reload's new settings (rules, bounds)."""
        self.settings = self.keys.settings = settings
        self.tracker.skew_ns = settings.skew_ns

    def reset(self) -> None:
        """After a batch was rolled back: the state table goes back to the journal's."""
        try:
            self.tracker.states = self.journal.load_states()
        except Exception:
            pass  # (the journal is unreadable too: what the table holds is all there is)
        self.keys.maybe_deleted = True

    def ingest(self, events: list[Event]) -> list[bool]:
        """Journal, classify and route a batch in one transaction; True per new event.

        Raises JournalError (and forgets the batch's effect on state) if the commit fails.
        """
        journal, executor, keys = self.journal, self.executor, self.keys
        results: list[bool] = []
        accepted: list[tuple[Event, Transition]] = []
        runs: list[Run] = []
        # Instant actions' outcomes, counted; kept whole only for watchers (each object
        # kept alive to the end of a batch costs garbage-collection time).
        watched = self.publisher.watched()
        instant: list[Run] = []
        inline: list[tuple[Run, Outcome]] = []
        inline_counts: dict[str, int] = {}
        queued_keys: set[Any] = set()
        rules = self.settings.rules
        now_mono = time.monotonic()
        now_ns = time.time_ns()
        ahead_ns = now_ns + self.settings.skew_ns
        tracker = self.tracker
        states = tracker.states
        max_keys = self.settings.max_keys
        try:
            # What is logged about the batch (and log actions' lines) is written only once
            # the batch is committed, and dropped with it if the commit fails.
            with logmod.held(self.log), journal.transaction():
                executor.flush()
                known = journal.seen_many([ev.id for ev in events])
                batch_ids: set[str] = set()
                for ev in events:
                    if ev.id in known or ev.id in batch_ids:
                        results.append(False)
                        continue
                    batch_ids.add(ev.id)
                    if ev.ts_ns > ahead_ns:
                        keys.clock_ahead(ev, now_ns)
                    if (len(states) >= max_keys and ev.key not in states
                            and ev.kind in KEYED_KINDS and not keys.make_room()):
                        tr = keys.refuse(ev)
                        journal.add_event(ev, tr)
                        accepted.append((ev, tr))
                        results.append(True)
                        continue
                    tr = tracker.observe(ev)
                    if tr.state == DELETED:
                        keys.maybe_deleted = True
                    journal.add_event(ev, tr)
                    accepted.append((ev, tr))
                    results.append(True)
                    if tr.cls in (STALE, INVALID_CLASS):
                        continue
                    current = states.get(ev.key)
                    if current is not None:
                        journal.put_state(ev.key, current)
                    for rule in fired(rules, ev, tr):
                        ending = rule.send_resolved and rule.ends_only(ev, tr)
                        for idx, action in enumerate(rule.actions):
                            if ending and not action.pages:
                                continue  # the end of an incident is news for alerts only
                            # An instant action with nothing of its key ahead of it runs
                            # below, before the commit; its run is journaled with its
                            # outcome, in one row.
                            if (action.inline and rule.plain and ev.key not in queued_keys
                                    and executor.idle(ev.key)):
                                instant.append(Run(journal.reserve_run(), ev, tr, rule,
                                                   idx, action, now_mono, now_ns))
                            else:
                                rowid = journal.add_run(ev.id, rule.id, idx, action.kind)
                                queued_keys.add(ev.key)
                                runs.append(Run(rowid, ev, tr, rule, idx, action, now_mono))
                # (Three passes over the batch rather than one: measurably faster.)
                for ev, tr in accepted:
                    self._announce(ev, tr)
                for run in instant:
                    outcome = executor.run_inline(run)
                    journal.add_finished_run(run.rowid, run.event.id, run.rule.id,
                                             run.index, run.action.kind, outcome, now_ns,
                                             time.time_ns())
                    inline_counts[outcome.status] = inline_counts.get(outcome.status, 0) + 1
                    if watched:
                        inline.append((run, outcome))
        except Exception as exc:
            # Nothing of the batch is committed: the state table goes back to the journal's.
            self.reset()
            if not isinstance(exc, JournalError):
                raise
            self.stats["journal_errors"] += 1
            if not self._journal_failing:
                self.log.error("journal.write_failed", error=str(exc), events=len(events),
                               hint="events are not acked; hooks spool them until it recovers")
            self._journal_failing = True
            raise
        if self._journal_failing:
            self.log.warning("journal.recovered")
            self._journal_failing = False
        self._after(events, accepted, watched)
        executor.ran_inline(inline_counts, inline)
        for run in runs:
            executor.submit(run)
        self._since_prune += len(accepted)
        if self._since_prune >= PRUNE_EVERY:
            self._since_prune = 0
            self.prune()
        return results

    def _after(self, events: list[Event], accepted: list[tuple[Event, Transition]],
               watched: bool) -> None:
        """Once a batch is committed: count it, tell watchers and the cluster view."""
        stats = self.stats
        stats["batches"] += 1
        stats["journaled"] += len(accepted)
        if len(events) > stats["largest_batch"]:
            stats["largest_batch"] = len(events)
        stats["duplicates"] += len(events) - len(accepted)
        cluster = self.cluster
        for ev, tr in accepted:
            if watched:
                self.publisher.publish("event", {
                    **describe(ev, tr), "prev_state": tr.prev_state, "effective": tr.state,
                    "ts_ns": ev.ts_ns})
            if cluster is not None:
                cluster.observe(ev, tr)
            if ev.extra and "config_problem" in ev.extra and ev.extra.get("via") != "spool":
                self.on_config_problem(ev, str(ev.extra["config_problem"]))

    def _announce(self, ev: Event, tr: Transition) -> None:
        """Log what ``ev`` is."""
        if tr.cls == TRANSITION:
            fields = describe(ev, tr, {"prev": tr.prev_state})
            duration = tr.duration_s(ev.ts_ns)
            fields["after_s"] = round(duration, 3) if duration is not None else None
            logmod.emit(self.log, "info", "event.transition", fields)
        elif tr.cls == INVALID_CLASS:
            self.log.warning("event.invalid", error=ev.error, argv=ev.argv, raw=ev.raw,
                             **describe(ev, tr))
        elif tr.cls == STALE:
            self.log.warning("event.stale", now=tr.state, **describe(ev, tr),
                             reason="older than the state already known for this key")
        elif logmod.enabled(self.log, "debug"):
            logmod.emit(self.log, "debug", "event." + tr.cls, describe(ev, tr))

    def flush(self) -> None:
        """Commit the outcomes the executor holds (a loop calls this between batches)."""
        try:
            self.executor.flush()
        except JournalError as exc:
            self.log.warning("journal.flush_failed", error=str(exc))

    def overloaded(self) -> bool:
        """Over ``max_backlog`` actions waiting: refuse new events (hooks spool them).

        Memory stays bounded under any storm; the spool on disk is the buffer. Once
        shedding, stay so until the backlog is down to a fifth *and* the spool is
        replayed, so that events are still journaled in the order they happened.
        """
        queued = self.executor.queued
        if not self.shedding and queued > self.settings.max_backlog:
            self.shedding = True
            self.stats["shed_periods"] += 1
            self.log.warning("intake.shedding", actions_queued=queued,
                             reason="actions fall behind; new events go to the spool")
        return self.shedding

    def prune(self) -> None:
        """Drop the oldest events past ``keep_events`` (and their alert messages)."""
        keep = self.settings.keep_events
        try:
            with self.journal.database.transaction():
                dropped = self.journal.prune(keep)
                oldest = self.journal.oldest_recv_ns() if dropped is not None else None
                if oldest is not None:
                    self.outbox.prune(oldest)
        except JournalError as exc:
            self.log.warning("journal.prune_failed", error=str(exc))
            return
        if dropped:
            self.log.info("journal.pruned", events=dropped, keep=keep)
