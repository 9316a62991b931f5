"""What a journal holds from the router's last life: runs it had not finished."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from knotify.executor import Run
from knotify.outcome import Outcome
from knotify.vocab import SKIPPED

if TYPE_CHECKING:
    from knotify.executor import Executor
    from knotify.rules import Rule
    from knotify.store.events import EventStore


def resume_runs(journal: EventStore, executor: Executor, rules: tuple[Rule, ...],
                log: Any) -> None:
    """Runs that were running when the router stopped are marked interrupted (never
    repeated: at most once); pending ones are handed to the executor again, or skipped
    when their rule or action is no longer in the config."""
    interrupted = journal.interrupt_running()
    if interrupted:
        log.warning("runs.interrupted", count=interrupted,
                    reason="router stopped while they ran; not repeated")
    by_id = {rule.id: rule for rule in rules}
    resumed = 0
    for rowid, event_id, rule_id, idx, kind in journal.pending_runs():
        loaded = journal.load_event(event_id)
        rule = by_id.get(rule_id)
        if loaded is None or rule is None or idx >= len(rule.actions) \
                or rule.actions[idx].kind != kind:
            with journal.transaction():
                journal.finish_run(rowid, Outcome(
                    SKIPPED, detail="its rule or action is no longer in the config"),
                    None, time.time_ns())
            continue
        ev, tr = loaded
        executor.submit(Run(rowid, ev, tr, rule, idx, rule.actions[idx], time.monotonic()))
        resumed += 1
    if resumed:
        log.info("runs.resumed", count=resumed)
