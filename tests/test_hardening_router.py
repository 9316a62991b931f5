"""The router's own files and processes (issue 9, findings 7, 10, 11, 12 and 14).

- outcomes of finished actions survive a failed journal commit (7);
- an exec action's timeout reaches the grandchildren that left its session (10);
- the journal (and its -wal/-shm) get explicit modes whatever the umask (11);
- a corrupt journal is one clear line, not a traceback (12);
- the router's lock covers the journal: a second router on the same state is refused (14).
"""

from __future__ import annotations

import asyncio
import grp
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import KEnv, RouterProcess, wait_for

from knotify import config as configmod
from knotify import log as logmod
from knotify.actions.exec import run_process
from knotify.errors import JournalError
from knotify.event import Event
from knotify.executor import Executor, Run
from knotify.outcome import Outcome
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.tracker import Tracker, Transition
from knotify.vocab import OK, RUNNING

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


def _setup(tmp_path: Path, argv: str) -> tuple[EventStore, Executor, Run]:
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
    journal = EventStore(Database(str(tmp_path / "journal.db")))
    tracker = Tracker()
    executor = Executor(journal, tracker, logmod.get(), lambda *_: None)
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
    journal.database.close()


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
    journal.database.close()


# --------------------------------------------------------------------------- finding 10

ESCAPER = """#!/bin/sh
# A grandchild in its own session, its parent (this script) still alive:
setsid sh -c 'echo $$ > {out}.setsid; trap "" TERM; exec sleep 300' &
# A double fork: the grandchild's parent exits at once, it is left to init.
( setsid sh -c 'echo $$ > {out}.orphan; trap "" TERM; exec sleep 300' & )
while [ ! -s {out}.setsid ] || [ ! -s {out}.orphan ]; do sleep 0.02; done
echo started > {out}
trap "" TERM
sleep 300
"""

DAEMON = """#!/bin/sh
# Starts a daemon (its own session) and exits 0: a finished action's children stay.
setsid sh -c 'echo $$ > {out}.daemon; exec sleep 300' &
while [ ! -s {out}.daemon ]; do sleep 0.02; done
"""


def _script(kenv: KEnv, name: str, text: str, out: Path) -> Path:
    path = kenv.root / name
    path.write_text(text.format(out=out))
    path.chmod(0o755)
    return path


def test_the_timeout_kills_grandchildren_that_left_the_session(
    kenv: KEnv, router: RouterProcess
) -> None:
    out = kenv.root / "esc"
    daemon_out = kenv.root / "dmn"
    kenv.write_config(f"""
[[rule]]
id = "daemon"
name = "VI_D"
[[rule.action]]
type = "exec"
argv = ["{_script(kenv, "daemon.sh", DAEMON, daemon_out)}"]

[[rule]]
id = "escape"
name = "VI_E"
[[rule.action]]
type = "exec"
argv = ["{_script(kenv, "escape.sh", ESCAPER, out)}"]
timeout = "1s"
kill_grace = "300ms"
""")
    router.start()
    kenv.cli("send", "INSTANCE", "VI_D", "MASTER", "100")
    wait_for(lambda: [a["status"] for e in kenv.history(name="VI_D") for a in e["actions"]]
             == ["ok"], 20, what="the daemon-starting action to end ok")
    daemon = int((kenv.root / "dmn.daemon").read_text())
    kenv.cli("send", "INSTANCE", "VI_E", "MASTER", "100")
    wait_for(lambda: [a["status"] for e in kenv.history(name="VI_E") for a in e["actions"]]
             == ["timeout"], 30, what="the escaping action to time out")
    setsid_pid = int((kenv.root / "esc.setsid").read_text())
    orphan_pid = int((kenv.root / "esc.orphan").read_text())
    try:
        wait_for(lambda: not _alive(setsid_pid), 10, what="the setsid grandchild to die")
        wait_for(lambda: not _alive(orphan_pid), 10, what="the orphaned grandchild to die")
        [act] = [a for e in kenv.history(name="VI_E") for a in e["actions"]]
        assert "2 more process(es)" in act["detail"], act["detail"]
        assert _alive(daemon), "a finished action's daemon is not the timed-out one's"
    finally:
        for pid in (setsid_pid, orphan_pid, daemon):
            if _alive(pid):
                os.kill(pid, 9)


def test_run_process_timeout_reaches_setsid_and_double_forked_grandchildren(
    tmp_path: Path
) -> None:
    """The same at the level of run_process, with grandchildren that do not hold the
    output pipe (so only the kill itself is tested)."""
    script = (f"setsid sh -c 'echo $$ > {tmp_path}/g1; trap \"\" TERM; exec sleep 100' "
              f">/dev/null 2>&1 & ( setsid sh -c 'echo $$ > {tmp_path}/g2; exec sleep 101' "
              f">/dev/null 2>&1 & ); while [ ! -s {tmp_path}/g1 ] || [ ! -s {tmp_path}/g2 ]; "
              "do sleep 0.02; done; sleep 50")
    outcome = asyncio.run(run_process(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"},
                                      1.0, 0.3))
    pids = [int((tmp_path / name).read_text()) for name in ("g1", "g2")]
    try:
        assert outcome.status == "timeout"
        wait_for(lambda: not any(_alive(pid) for pid in pids), 10,
                 what="both grandchildren to be killed")
        assert "2 more process(es)" in outcome.detail
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, 9)


# --------------------------------------------------------------------------- finding 11


def _mode(path: Path) -> tuple[str, str]:
    st = path.stat()
    return oct(stat.S_IMODE(st.st_mode)), grp.getgrgid(st.st_gid).gr_name


@pytest.mark.parametrize(("umask", "group"), [(0o022, None), (0o000, None),
                                              (0o022, "nogroup"), (0o077, "nogroup")])
def test_the_journal_gets_explicit_modes_whatever_the_umask(
    kenv: KEnv, router: RouterProcess, umask: int, group: str | None
) -> None:
    kenv.write_config((f'group = "{group}"\n' if group else "") + LOG_RULE)
    old = os.umask(umask)
    try:
        router.start()
    finally:
        os.umask(old)
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    # The group is the router's own, never the hooks': they must not read the journal.
    want = ("0o640" if group else "0o600", "root")
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(kenv.journal) + suffix)
        assert _mode(path) == want, path
    assert _mode(kenv.runtime / "router.lock")[0] == "0o640"


def test_an_existing_journal_with_loose_modes_is_tightened(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(LOG_RULE)
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    router.stop()
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(kenv.journal) + suffix)
        if path.exists():
            path.chmod(0o666)
    router.start()
    for suffix in ("", "-wal", "-shm"):
        assert _mode(Path(str(kenv.journal) + suffix))[0] == "0o600"


# --------------------------------------------------------------------------- finding 12


def _journal_with_events(kenv: KEnv, router: RouterProcess) -> None:
    """A journal of a few hundred events and their runs, closed cleanly."""
    kenv.write_config(LOG_RULE)
    router.start()
    subprocess.run([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
from knotify import client, spool, stamp
s = client.load_settings({str(kenv.config)!r})
s.ack_timeout = 30.0  # acked, not spooled, however loaded the machine is
for i in range(300):
    e = stamp.stamp({{"kind": "INSTANCE", "name": "VI_%d" % (i % 9), "prio": 100, "vs": "",
                     "state": ("MASTER", "BACKUP")[i % 2], "form": "send"}}, "send", s.host,
                    spool.next_seq(s.spool_dir))
    assert client.deliver(e, s) == "acked"
"""], env=kenv.env, check=True, timeout=120)
    router.stop()


def _run_once(kenv: KEnv) -> subprocess.CompletedProcess[str]:
    return kenv.cli("run", check=False, timeout=60)


@pytest.mark.parametrize("damage", ["header", "pages", "state-table"])
def test_a_corrupt_journal_is_one_clear_line(
    kenv: KEnv, router: RouterProcess, damage: str
) -> None:
    _journal_with_events(kenv, router)
    db = sqlite3.connect(kenv.journal)
    [(state_root,)] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'state'")
    db.close()
    data = bytearray(kenv.journal.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    if damage == "header":
        data[:100] = b"\x42" * 100
    elif damage == "pages":  # every page after the schema: "database disk image is malformed"
        for offset in range(page, len(data), page):
            data[offset:offset + page] = b"\xa5" * page
    else:  # only the state table, read after the journal is opened
        offset = (state_root - 1) * page
        data[offset:offset + page] = b"\xa5" * page
    kenv.journal.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(str(kenv.journal) + suffix).unlink(missing_ok=True)
    proc = _run_once(kenv)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("knotify:")]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    [line] = errors
    assert str(kenv.journal) in line and "corrupt" in line and "move it aside" in line


# --------------------------------------------------------------------------- finding 14


def test_a_second_router_on_the_same_journal_is_refused_naming_the_holder(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(LOG_RULE)
    router.start()
    other = kenv.root / "other.toml"
    other.write_text(f'[paths]\nruntime_dir = "{kenv.root}/run2"\n'
                     f'state_dir = "{kenv.state}"\n' + LOG_RULE)
    proc = kenv.cli("run", "-c", str(other), check=False, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("knotify:")]
    assert router.proc is not None
    assert f"pid {router.proc.pid}" in line and str(kenv.journal) in line
    assert str(kenv.runtime) in line, "names where the holder's socket is"
    # The first one still serves, alone.
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    assert [e["name"] for e in kenv.history()] == ["VI_1"]
    assert not any(r.get("event") == "journal.write_failed" for r in router.records())
