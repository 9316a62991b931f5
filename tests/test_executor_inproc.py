"""The executor built in-process: a real journal file, real subprocesses, a fake clock.

No router process: the test journals the event and its runs as intake would, submits
them, and reads the outcomes back from the journal. The executor's clock decides
every time it uses: a run's start and end, an event's age (``max_age``) and the end
of a rule's ``delay``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from fakeclock import FakeClock

from knotify import config as configmod
from knotify import log as logmod
from knotify.event import Event
from knotify.executor import Executor, Run
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.tracker import Tracker
from knotify.vocab import OK, SKIPPED

RULE = """
[paths]
runtime_dir = "{tmp}/run"
state_dir = "{tmp}/state"
[[rule]]
id = "r"
{extra}
[[rule.action]]
type = "exec"
argv = ["true"]
"""


def _run_one(tmp_path: Path, clock: FakeClock, extra: str = "", age_s: float = 0.0,
             queued_ago_s: float = 0.0) -> tuple[str, str | None, int | None, int | None]:
    """Journal one event (received ``age_s`` before the clock's now), run its rule's exec
    action on ``clock``; its run's (status, detail, started_ns, ended_ns)."""
    config = configmod.parse(RULE.format(tmp=tmp_path, extra=extra), "t.toml")
    path = tmp_path / "journal.db"
    journal = EventStore(Database(str(path)))
    tracker = Tracker()
    executor = Executor(journal, tracker, logmod.get(), lambda *_: None, clock=clock)
    received = clock.time_ns() - int(age_s * 1e9)
    ev = Event(id="event-00000001", host="kb1", kind="INSTANCE", name="VI_1",
               state="MASTER", prio=100, seq=1, ts_ns=received, recv_ns=received,
               source="send")
    tr = tracker.observe(ev)
    rule = config.rules[0]
    with journal.transaction():
        journal.add_event(ev, tr)
        rowid = journal.add_run(ev.id, rule.id, 0, rule.actions[0].kind)
    run = Run(rowid, ev, tr, rule, 0, rule.actions[0], clock.monotonic() - queued_ago_s)

    async def scenario() -> None:
        executor.submit(run)
        while executor.queued:
            await asyncio.sleep(0.01)
        await executor.drain(5)

    asyncio.run(scenario())
    journal.database.close()
    db = sqlite3.connect(path)
    try:
        status, detail, started, ended = db.execute(
            "SELECT status, detail, started_ns, ended_ns FROM runs").fetchone()
    finally:
        db.close()
    return status, detail, started, ended


def test_runs_are_stamped_with_the_executors_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    status, _, started, ended = _run_one(tmp_path, clock)
    assert status == OK
    # The fake clock never moved: both stamps are its time, not the machine's.
    assert started == ended == clock.time_ns()


def test_max_age_is_judged_on_the_executors_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    status, detail, started, _ = _run_one(tmp_path / "old", clock, 'max_age = "1m"', age_s=61)
    assert (status, detail) == (SKIPPED, "expired: 61.0s old, rule max_age is 60s")
    assert started is None  # skipped before it started
    status, _, _, _ = _run_one(tmp_path / "young", clock, 'max_age = "1m"', age_s=59)
    assert status == OK


@pytest.mark.timeout(60)
def test_a_delay_ends_on_the_clocks_monotonic_time(tmp_path: Path) -> None:
    """A run queued an hour ago on the clock, by a rule with a one-hour delay, runs now
    (a real hour's sleep would hit the timeout)."""
    clock = FakeClock()
    status, _, started, _ = _run_one(tmp_path, clock, 'delay = "1h"', queued_ago_s=3600)
    assert status == OK and started == clock.time_ns()
