"""The router's own files and processes (issue 9, findings 7, 10, 11, 12 and 14).

- outcomes of finished actions survive a failed journal commit (7);
- an exec action's timeout reaches the grandchildren that left its session (10);
- the journal (and its -wal/-shm) get explicit modes whatever the umask (11);
- a corrupt journal is one clear line, not a traceback (12);
- the router's lock covers the journal: a second router on the same state is refused (14).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from knotify import config as configmod
from knotify import log as logmod
from knotify.actions.base import OK, RUNNING, Outcome
from knotify.event import Event
from knotify.executor import Executor, Run
from knotify.journal import Journal, JournalError
from knotify.tracker import Tracker, Transition

LOG_RULE = """
[[rule]]
id = "log"
on = "every"
[[rule.action]]
type = "log"
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- finding 7


class DenyCommit:
    """SQLite's own authorizer refusing COMMIT: a commit that fails for real (as on a
    full disk), at a moment the test chooses."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.denied = 0

    def __enter__(self) -> DenyCommit:
        def authorize(action: int, arg1: str | None, *_: object) -> int:
            if action == sqlite3.SQLITE_TRANSACTION and arg1 == "COMMIT":
                self.denied += 1
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        self.db.set_authorizer(authorize)
        return self

    def __exit__(self, *_: object) -> None:
        self.db.set_authorizer(None)


def _status(path: Path, rowid: int) -> str:
    db = sqlite3.connect(path)
    try:
        return str(db.execute("SELECT status FROM runs WHERE rowid = ?", (rowid,)).fetchone()[0])
    finally:
        db.close()


def _setup(tmp_path: Path, argv: str) -> tuple[Journal, Executor, Run]:
    config = configmod.parse(f"""
[paths]
runtime_dir = "{tmp_path}/run"
state_dir = "{tmp_path}/state"
[[rule]]
id = "act"
[[rule.action]]
type = "exec"
argv = {argv}
""", "test.toml")
    journal = Journal(str(tmp_path / "journal.db"))
    tracker = Tracker()
    executor = Executor(journal, lambda: tracker, logmod.get(), lambda *_: None)
    ev = Event(id="event-00000001", host="h1", kind="INSTANCE", name="VI_1", state="MASTER",
               prio=100, seq=1, ts_ns=1, recv_ns=time.time_ns(), source="send")
    tr = Transition("transition", "MASTER", "INIT", None, 1)
    rule = config.rules[0]
    with journal.transaction():
        journal.add_event(ev, tr)
        rowid = journal.add_run(ev.id, rule.id, 0, rule.actions[0].kind)
    return journal, executor, Run(rowid, ev, tr, rule, 0, rule.actions[0], time.monotonic())


def test_an_outcome_survives_a_failed_group_commit(tmp_path: Path) -> None:
    """The action ends, the commit holding its outcome fails: the outcome is kept and
    written by the next commit that works (it used to stay ``running``, then read
    ``interrupted`` after a restart although the action ended ok)."""
    marker = tmp_path / "go"
    journal, executor, run = _setup(
        tmp_path, f'["/bin/sh", "-c", "while [ ! -e {marker} ]; do sleep 0.02; done"]')

    async def scenario() -> None:
        executor.submit(run)
        while _status(tmp_path / "journal.db", run.rowid) != RUNNING:
            await asyncio.sleep(0.02)
        with DenyCommit(journal.db) as deny:
            marker.touch()
            while executor.counts.get(OK) != 1 or deny.denied == 0:
                await asyncio.sleep(0.02)  # the action ended and its commit was refused
        assert _status(tmp_path / "journal.db", run.rowid) == RUNNING
        executor.flush()  # what the flush loop does next
        await executor.drain(5)

    asyncio.run(scenario())
    assert _status(tmp_path / "journal.db", run.rowid) == OK
    journal.close()


def test_an_outcome_flushed_inside_a_batch_that_fails_is_kept(tmp_path: Path) -> None:
    """``ingest`` flushes waiting outcomes inside the batch's transaction; when that
    transaction fails, the outcomes must not be dropped with it."""
    journal, executor, run = _setup(tmp_path, '["/bin/true"]')
    with journal.transaction():
        journal.start_run(run.rowid, time.time_ns())
    # A finished run whose outcome waits for the next commit.
    executor.updates.append((run.rowid, Outcome(OK, exit_code=0), time.time_ns(),
                             time.time_ns()))
    ev2 = Event(id="event-00000002", host="h1", kind="INSTANCE", name="VI_2",
                state="MASTER", seq=2, ts_ns=2, recv_ns=2, source="send")
    # As Router.ingest does: the flush is part of the batch's transaction.
    with DenyCommit(journal.db), pytest.raises(JournalError), journal.transaction():
        executor.flush()
        journal.add_event(ev2, Transition("transition", "MASTER", "INIT", None, 1))
    assert _status(tmp_path / "journal.db", run.rowid) == RUNNING
    executor.flush()
    assert _status(tmp_path / "journal.db", run.rowid) == OK
    journal.close()
