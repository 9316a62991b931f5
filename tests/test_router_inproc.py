"""The router built in-process: no router process, no sockets; a real config file, a real
journal (SQLite file), a real spool folder.

:meth:`Router.open` assembles the parts on the journal; these tests hand events to
:meth:`Router.ingest` (what every socket and source does) and to the input sources, then
read the journal and the state table back.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog
from conftest import KEnv

from knotify import config as configmod
from knotify import resync, spool, stamp
from knotify.event import Event, decode_event
from knotify.router import Router
from knotify.sources import Inlet
from knotify.sources.fifo import FifoSource

T = TypeVar("T")

LOG_RULE = """
[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"
"""


def in_process(kenv: KEnv, body: Callable[[Router], T]) -> T:
    """``body(router)`` on a router opened on ``kenv``'s config, inside an event loop;
    the router is closed (actions drained, journal closed, locks released) after."""
    router = Router(configmod.load(str(kenv.config)), structlog.get_logger("test"))

    async def main() -> T:
        router.open()
        try:
            return body(router)
        finally:
            await router.close()

    return asyncio.run(main())


def event(name: str, state: str, seq: int, host: str = "h1", kind: str = "INSTANCE",
          **fields: Any) -> Event:
    wire: dict[str, Any] = {"v": 1, "id": f"{name}-{state}-{seq}-{time.time_ns()}",
                            "host": host, "kind": kind, "name": name, "state": state,
                            "prio": 100, "seq": seq, "ts_ns": time.time_ns(),
                            "source": "send"}
    wire.update(fields)
    return decode_event(wire)


def test_a_router_built_in_process_journals_classifies_and_acts(kenv: KEnv) -> None:
    kenv.write_config(LOG_RULE)
    backup, master = event("VI_1", "BACKUP", 1), event("VI_1", "MASTER", 2)

    def body(router: Router) -> tuple[list[bool], list[bool], list[dict[str, Any]]]:
        first = router.ingest([backup, master])
        again = router.ingest([master])  # at-least-once delivery: the same id again
        assert router.tracker.states[master.key].state == "MASTER"
        assert router.stats["journaled"] == 2 and router.stats["duplicates"] == 1
        return first, again, router.journal.history(10)

    first, again, history = in_process(kenv, body)
    assert first == [True, True] and again == [False]
    assert [(e["name"], e["state"], e["class"]) for e in reversed(history)] == [
        ("VI_1", "BACKUP", "transition"), ("VI_1", "MASTER", "transition")]
    assert history[0]["prev_state"] == "BACKUP"
    # The log action is instant: it ran inline and its run was journaled with its outcome.
    for e in history:
        assert [(a["rule"], a["status"]) for a in e["actions"]] == [("log-all", "ok")], e


def test_the_state_table_survives_a_restart_in_process(kenv: KEnv) -> None:
    kenv.write_config("")
    in_process(kenv, lambda router: router.ingest([event("VI_1", "MASTER", 1)]))
    ev = event("VI_1", "MASTER", 2)

    def body(router: Router) -> str:
        assert router.tracker.states[ev.key].state == "MASTER"  # loaded from the journal
        router.ingest([ev])
        return str(router.journal.history(1)[0]["class"])

    assert in_process(kenv, body) == "repeat"


def test_fifo_lines_wait_in_the_spool_while_the_journal_is_locked(kenv: KEnv) -> None:
    """The one "ingest or spool" path: FIFO lines the journal cannot take (another process
    holds it locked) are spooled, never dropped, and the spool replay journals them in
    order once the lock is gone."""
    fifo = kenv.root / "notify.fifo"
    kenv.write_config(f'[router]\n[[router.fifos]]\npath = "{fifo}"\nhost = "lb1"\n')

    def body(router: Router) -> tuple[int, list[dict[str, Any]], int]:
        source = next(s for s in router.sources if isinstance(s, FifoSource))
        locker = sqlite3.connect(str(kenv.journal), isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            now, mono = time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            source.lines([('INSTANCE "VI_1" BACKUP 100', now, mono),
                          ('INSTANCE "VI_1" MASTER 100', now + 1, mono + 1)])
        finally:
            locker.close()
        spooled = len(kenv.spooled())
        assert router.stats["journal_errors"] == 1
        assert router.journal.history(10) == []
        replayed = router.spool.replay_now()
        return spooled, router.journal.history(10), replayed

    spooled, history, replayed = in_process(kenv, body)
    assert spooled == 2 and replayed == 2 and kenv.spooled() == []
    assert [(e["host"], e["source"], e["state"]) for e in reversed(history)] == [
        ("lb1", "fifo", "BACKUP"), ("lb1", "fifo", "MASTER")]
    assert history[0]["seq"] > history[1]["seq"]


def test_max_keys_refuses_new_keys_until_a_deleted_one_makes_room(kenv: KEnv) -> None:
    kenv.write_config("[router]\nmax_keys = 10\n")

    def body(router: Router) -> tuple[list[str], int, int]:
        router.ingest([event(f"VI_{i}", "MASTER", i + 1) for i in range(10)])
        router.ingest([event("VI_new", "MASTER", 11)])
        refused = router.journal.history(1)[0]
        assert refused["class"] == "refused" and "max_keys = 10" in refused["error"]
        router.ingest([event("VI_3", "DELETED", 12)])
        router.ingest([event("VI_new", "MASTER", 13)])
        states = router.tracker.states
        return (sorted(key[2] for key in states), router.stats["keys_refused"],
                router.stats["keys_forgotten"])

    names, refused, forgotten = in_process(kenv, body)
    assert refused == 1 and forgotten == 1
    assert "VI_3" not in names and "VI_new" in names and len(names) == 10


def test_an_event_dated_ahead_of_the_router_is_ordered_as_received(kenv: KEnv) -> None:
    kenv.write_config("[router]\nmax_clock_skew = \"1m\"\n")
    ahead = event("VI_1", "MASTER", 1, ts_ns=time.time_ns() + 3600 * 10**9)

    def body(router: Router) -> dict[str, Any]:
        router.ingest([ahead])
        assert router.stats["clock_ahead"] == 1
        return router.journal.history(1)[0]

    row = in_process(kenv, body)
    assert 3500 < row["extra"]["clock"]["ahead_s"] < 3700
    assert row["ts_ns"] <= time.time_ns()


def test_reload_in_process_hands_the_intake_its_new_rules(kenv: KEnv) -> None:
    kenv.write_config("")

    def body(router: Router) -> tuple[bool, str, int]:
        assert router.intake.settings.rules == ()
        kenv.write_config(LOG_RULE + "[router]\nspool_interval = \"5s\"\n")
        os.chmod(kenv.config, 0o600)
        ok, detail = router.reload()
        assert router.spool.quiet() == 5.0
        return ok, detail, len(router.intake.settings.rules)

    ok, detail, rules = in_process(kenv, body)
    assert ok and detail == "config reloaded: 1 rules" and rules == 1


def test_the_router_lets_go_of_its_locks_when_closed(kenv: KEnv) -> None:
    """Two routers one after the other in one process: the second is not refused."""
    kenv.write_config("")
    for _ in range(2):
        assert in_process(kenv, lambda router: router.ingest([event("VI_1", "MASTER", 1)]))
    assert Path(kenv.journal).exists()


def test_a_fifo_line_the_decoder_refuses_goes_in_as_invalid_in_process(kenv: KEnv) -> None:
    fifo = kenv.root / "notify.fifo"
    kenv.write_config(f'[router]\nfifos = ["{fifo}"]\n')

    def body(router: Router) -> list[dict[str, Any]]:
        source = next(s for s in router.sources if isinstance(s, FifoSource))
        now, mono = time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        source.lines([('INSTANCE "VI\x00EVIL" MASTER 100', now, mono),
                      ('INSTANCE "VI_OK" BACKUP 100', now, mono)])
        assert kenv.spooled() == []
        return router.journal.history(10)

    by_kind = {e["kind"]: e for e in in_process(kenv, body)}
    assert "NUL" in by_kind["INVALID"]["error"] and by_kind["INVALID"]["source"] == "fifo"
    assert by_kind["INSTANCE"]["name"] == "VI_OK"


def test_shedding_ends_once_the_backlog_is_down_and_the_spool_is_empty(kenv: KEnv) -> None:
    kenv.write_config("[router]\nmax_backlog = 10\n")

    def body(router: Router) -> tuple[bool, bool, int]:
        router.intake.shedding = True  # as after more than max_backlog actions waited
        router.spool.turn()
        still = router.intake.shedding
        return still, router.intake.overloaded(), router.stats["shed_periods"]

    still, overloaded, periods = in_process(kenv, body)
    # Nothing waits (no action, nothing spooled): intake resumes; no new shedding period.
    assert still is False and overloaded is False and periods == 0


def test_resync_events_a_bug_refuses_are_spooled_not_lost(
    kenv: KEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resync's events take the sources' one way in: when ingesting them fails for an
    unexpected reason (a bug, injected here: none is known), they are spooled and the
    fault counted under ``resync``; the spool replay journals them afterwards."""
    kenv.write_config("")
    instances = [{"name": "VI_1", "state": "MASTER", "prio": 100, "last_transition": 1.5}]

    def body(router: Router) -> tuple[int, int, list[dict[str, Any]]]:
        inlet = Inlet(router.ingest, str(kenv.spool), router.faults, router.log)
        wire = resync.wire_events(instances, "lb1", lambda: spool.next_seq(str(kenv.spool)),
                                  stamp.new_id)
        journal_ingest = router.intake.ingest

        def buggy(events: list[Event]) -> list[bool]:
            raise RuntimeError("an unknown bug")

        monkeypatch.setattr(router.intake, "ingest", buggy)
        assert inlet.deliver(wire, "resync") is False
        assert router.faults.counts["resync"] == 1
        spooled = len(kenv.spooled())
        monkeypatch.setattr(router.intake, "ingest", journal_ingest)
        return spooled, router.spool.replay_now(), router.journal.history(10)

    spooled, replayed, history = in_process(kenv, body)
    assert spooled == 1 and replayed == 1
    assert [(e["host"], e["name"], e["source"]) for e in history] == [("lb1", "VI_1", "resync")]
