"""The ops dispatcher in-process: real stores on a real SQLite file, a real tracker, the
real alert engine and cluster monitor, the router's Faults; no router process.

What the router's ``_command`` hands an op message to: an unknown op and a bad field
are refused by name and counted as rejected, an op that raises is an internal error
counted (and logged once) under ``command``, and the next request is served.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from knotify import __version__, cli, ops
from knotify import config as configmod
from knotify.alerts.engine import AlertEngine
from knotify.cluster.monitor import ClusterMonitor
from knotify.errors import WireError
from knotify.event import Event
from knotify.ops import history, status
from knotify.ops.base import Answer, Op, OpContext
from knotify.ops.dispatch import Dispatcher
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.store.outbox import Outbox
from knotify.supervisor import Faults
from knotify.tracker import Tracker
from knotify.trust import LOCAL, PLAIN_TCP, Peer
from knotify.vocab import ADMINS_ONLY, ANY_SENDER, OP_ACCESS, OWN_HOSTS

LOG = structlog.get_logger()


@dataclass
class Parts:
    """What the router hands an op (``OpContext``), built from real parts.

    ``info`` and ``reload`` are the router's own methods; here they answer what a test
    sets (the router's reload is pinned by tests/test_cli.py against a real router)."""

    journal: EventStore | None
    outbox: Outbox | None
    tracker: Tracker
    faults: Faults
    cluster: ClusterMonitor | None = None
    alerts: AlertEngine | None = None
    peers: None = None
    started: float = field(default_factory=time.time)
    reload_answer: tuple[bool, str] = (True, "config reloaded: 0 rules")
    rejected: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        return {"keys": len(self.tracker.states)}

    def reload(self) -> tuple[bool, str]:
        return self.reload_answer


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    database = Database(str(tmp_path / "journal.db"))
    journal = EventStore(database)
    yield Parts(journal, Outbox(database), Tracker(), Faults(LOG))
    database.close()


def with_cluster(parts: Parts) -> Parts:
    assert parts.journal is not None
    config = configmod.load(None)
    parts.cluster = ClusterMonitor(config.cluster, "here", parts.journal.database,
                                   parts.tracker, lambda evs: [True] * len(evs), LOG)
    return parts


def with_alerts(parts: Parts) -> Parts:
    assert parts.journal is not None
    config = configmod.load(None)
    parts.alerts = AlertEngine(config.alert_engine, parts.journal, parts.tracker, LOG,
                               lambda topic, data: None)
    return parts


def ask(parts: Parts, op: str, dispatcher: Dispatcher | None = None,
        **fields: Any) -> dict[str, Any]:
    answer = (dispatcher.answer if dispatcher else ops.dispatch)(
        parts, {"v": 1, "op": op, **fields}, parts.rejected.append)
    out: dict[str, Any] = json.loads(answer)
    return out


def journal_events(parts: Parts, *events: Event) -> None:
    """As the router's intake does: classify, journal the event and the key's state."""
    assert parts.journal is not None
    with parts.journal.transaction():
        for ev in events:
            tr = parts.tracker.observe(ev)
            parts.journal.add_event(ev, tr)
            parts.journal.put_state(ev.key, parts.tracker.states[ev.key])


def event(n: int, host: str = "lb1", name: str = "VI_1", state: str = "MASTER") -> Event:
    return Event(id=f"event-{n:08d}", host=host, kind="INSTANCE", name=name, state=state,
                 prio=100, seq=n, ts_ns=n * 1_000_000, recv_ns=n * 1_000_000, source="send")


# -- the registry ---------------------------------------------------------------------------

def test_every_op_is_registered_once_by_its_wire_name() -> None:
    assert set(ops.REGISTRY) == {
        "ping", "status", "history", "stats", "reload", "heartbeat", "peer_forget",
        "silence_add", "silence_list", "silence_expire", "alerts", "peer_sync"}
    assert all(op.name == name for name, op in ops.REGISTRY.items())


def test_an_op_registered_twice_is_refused_at_import() -> None:
    with pytest.raises(ValueError, match="'ping' is registered twice"):
        ops.registry((ops.MODULES[0], ops.MODULES[0]))


def test_every_op_with_a_cli_side_is_a_command_of_the_cli() -> None:
    assert set(ops.COMMANDS) <= set(cli.COMMANDS)
    parser = cli.build_parser()
    for name, module in ops.COMMANDS.items():
        assert module.OPS, name
        args = parser.parse_args([name, *{"forget-peer": ["lb9"],
                                          "silence": ["list"]}.get(name, [])])
        assert args.func is module.run


def test_each_op_says_who_may_use_it() -> None:
    """Who may use an op is the op's own ``access``: only ping and heartbeat are open to
    every sender, history to a key about its own hosts; every other op, and an op this
    router does not know, is for the control socket and admin keys."""
    assert all(op.access in OP_ACCESS for op in ops.REGISTRY.values())
    assert {name: op.access for name, op in ops.REGISTRY.items()
            if op.access != ADMINS_ONLY} == {
        "ping": ANY_SENDER, "heartbeat": ANY_SENDER, "history": OWN_HOSTS}
    assert ops.access("history") == OWN_HOSTS
    assert ops.access("no-such-op") == ADMINS_ONLY


@pytest.mark.parametrize("peer, access, msg, allowed", [
    (LOCAL, ADMINS_ONLY, {}, True),
    (Peer(key="ops", admin=True, hosts=frozenset({"ops"})), ADMINS_ONLY, {}, True),
    (Peer(key="lb1", hosts=frozenset({"lb1"})), ADMINS_ONLY, {}, False),
    (PLAIN_TCP, ADMINS_ONLY, {}, False),
    (Peer(key="lb1", hosts=frozenset({"lb1"})), ANY_SENDER, {}, True),
    (PLAIN_TCP, ANY_SENDER, {}, True),
    (Peer(key="lb1", hosts=frozenset({"lb1"})), OWN_HOSTS, {"host": "lb1"}, True),
    (Peer(key="lb1", hosts=frozenset({"lb1"})), OWN_HOSTS, {"host": "lb2"}, False),
    (Peer(key="lb1", hosts=frozenset({"lb1"})), OWN_HOSTS, {}, False),
    (Peer(key="any", hosts=None), OWN_HOSTS, {"host": "lb7"}, True),
    (PLAIN_TCP, OWN_HOSTS, {"host": "lb1"}, False),
])
def test_a_peer_may_use_an_op_as_its_access_says(peer: Peer, access: str, msg: dict[str, Any],
                                                 allowed: bool) -> None:
    refusal = peer.refuse_op("some_op", access, msg)
    assert (refusal is None) is allowed, refusal
    if refusal is not None and access == OWN_HOSTS:
        assert "some_op of other hosts (ask with host = one of yours)" in refusal
    elif refusal is not None:
        assert "may not use 'some_op'" in refusal and "[router.curve] admins" in refusal


# -- refused requests -----------------------------------------------------------------------

def test_an_unknown_op_is_refused_by_name_counted_and_the_next_served(parts: Parts) -> None:
    answer = ask(parts, "no_such_op")
    assert answer == {"v": 1, "ok": False, "error": "unknown op 'no_such_op'"}
    assert parts.rejected == ["unknown op 'no_such_op'"]
    assert not parts.faults.counts
    assert ask(parts, "ping")["ok"] is True


def test_a_long_unknown_op_is_named_cut_short(parts: Parts) -> None:
    answer = ask(parts, "x" * 5000)
    assert answer["error"] == f"unknown op {'x' * 40!r}"


@pytest.mark.parametrize("op", ["heartbeat", "peer_forget", "silence_add", "silence_list",
                                "silence_expire", "alerts"])
def test_an_op_whose_part_is_not_there_is_unknown(parts: Parts, op: str) -> None:
    assert ask(parts, op, host="lb1")["error"] == f"unknown op {op!r}"
    assert parts.rejected == [f"unknown op {op!r}"]


@pytest.mark.parametrize(("op", "fields", "error"), [
    ("status", {"offset": -1}, "status 'offset' must be an integer of 0 or more"),
    ("status", {"offset": "1"}, "status 'offset' must be an integer of 0 or more"),
    ("status", {"offset": True}, "status 'offset' must be an integer of 0 or more"),
    ("history", {"limit": 0}, "history 'limit' must be an integer 1..100000"),
    ("history", {"limit": 100_001}, "history 'limit' must be an integer 1..100000"),
    ("history", {"limit": 2.5}, "history 'limit' must be an integer 1..100000"),
    ("history", {"host": 5}, "history 'host' must be a string (a pattern)"),
    ("history", {"name": "x" * 256}, "history 'name' must be a string (a pattern)"),
    ("history", {"kind": ["VS"]}, "history 'kind' must be a string (a pattern)"),
    ("history", {"id": "a b"}, "history 'id' must be an event id (letters, digits, _ and -) "
     "or its first characters"),
    ("history", {"id": ""}, "history 'id' must be an event id (letters, digits, _ and -) "
     "or its first characters"),
    ("history", {"id": "; rm -rf /"}, "history 'id' must be an event id (letters, digits, _ "
     "and -) or its first characters"),
    ("history", {"transitions": "yes"}, "history 'transitions' must be true or false"),
    ("history", {"before": 0}, "history 'before' must be an event number (rowid)"),
    ("history", {"before": "9"}, "history 'before' must be an event number (rowid)"),
])
def test_a_bad_field_is_refused_naming_it(parts: Parts, op: str, fields: dict[str, Any],
                                          error: str) -> None:
    journal_events(parts, event(1))
    assert ask(parts, op, **fields) == {"v": 1, "ok": False, "error": error}
    assert parts.rejected == [error]
    assert not parts.faults.counts
    assert ask(parts, op)["ok"] is True  # and the router serves on


def test_alert_ops_refuse_bad_fields_through_the_engine(parts: Parts) -> None:
    with_alerts(parts)
    bad = ask(parts, "silence_add", matchers=["name=VI_1"], duration_s="2h", reason="r")
    assert bad["error"] == "silence_add 'duration_s' must be a number of seconds"
    gone = ask(parts, "silence_expire", id=4711)
    assert gone["ok"] is False and "4711" in gone["error"]
    assert parts.rejected == [bad["error"], gone["error"]]
    assert not parts.faults.counts


def test_a_bad_heartbeat_is_refused_naming_the_field(parts: Parts) -> None:
    with_cluster(parts)
    answer = ask(parts, "heartbeat", host="lb2", evil="$(reboot)")
    assert answer["error"] == "heartbeat has unknown field(s): 'evil'"
    assert parts.rejected == [answer["error"]]


# -- ops that raise -------------------------------------------------------------------------

def test_an_op_that_raises_is_an_internal_error_counted_and_logged_once(parts: Parts) -> None:
    assert parts.journal is not None
    parts.journal.database.close()  # every read of the journal now raises
    with capture_logs() as logs:
        first = ask(parts, "status")
        second = ask(parts, "history")
        third = ask(parts, "status")
    assert first["ok"] is False
    assert first["error"].startswith("internal error: ProgrammingError: ")
    assert "closed database" in first["error"]
    assert second["error"] == first["error"]
    assert parts.faults.counts == {"command": 3}
    assert not parts.rejected
    faults = [e for e in logs if e["event"] == "router.fault"]
    # status and history raise at two places: one line each; the second status only counts.
    assert [(e["where"], e["op"]) for e in faults] == [("command", "status"),
                                                       ("command", "history")]
    assert third["ok"] is False
    assert ask(parts, "ping")["ok"] is True  # ops that need no journal are still served


def test_a_registered_op_that_raises_anything_is_answered(parts: Parts) -> None:
    def boom(ctx: OpContext, msg: dict[str, Any]) -> Answer:
        raise KeyError("deep inside")

    def refuse(ctx: OpContext, msg: dict[str, Any]) -> Answer:
        raise WireError("refuse 'what' is wrong")

    dispatcher = Dispatcher({**ops.REGISTRY, "boom": Op("boom", boom),
                             "refuse": Op("refuse", refuse)})
    assert ask(parts, "boom", dispatcher) == {
        "v": 1, "ok": False, "error": "internal error: KeyError: 'deep inside'"}
    assert parts.faults.counts == {"command": 1}
    assert ask(parts, "refuse", dispatcher)["error"] == "refuse 'what' is wrong"
    assert parts.rejected == ["refuse 'what' is wrong"]
    assert ask(parts, "ping", dispatcher)["ok"] is True


def test_the_journal_not_open_yet_is_an_internal_error(parts: Parts) -> None:
    parts.journal = None
    answer = ask(parts, "status")
    assert answer["error"] == "internal error: RuntimeError: the journal is not open"
    assert parts.faults.counts == {"command": 1}


# -- what the ops answer --------------------------------------------------------------------

def test_ping_and_stats(parts: Parts) -> None:
    parts.started = time.time() - 60
    pong = ask(parts, "ping")
    assert pong["ok"] is True and pong["version"] == __version__ and pong["pid"] == os.getpid()
    assert 59 < pong["uptime_s"] < 3600
    journal_events(parts, event(1))
    assert ask(parts, "stats") == {"v": 1, "ok": True, "router": {"keys": 1}}


def test_status_pages_the_state_table(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "PAGE", 2)
    journal_events(parts, *(event(n, host=f"lb{n}") for n in range(1, 6)))
    first = ask(parts, "status")
    assert [s["host"] for s in first["states"]] == ["lb1", "lb2"]
    assert first["states_total"] == 5 and first["next"] == 2
    assert first["router"] == {"keys": 5} and first["cluster"] == {}
    last = ask(parts, "status", offset=4)
    assert [s["host"] for s in last["states"]] == ["lb5"] and last["next"] is None


def test_status_carries_the_cluster_view_on_its_first_page(parts: Parts) -> None:
    with_cluster(parts)
    journal_events(parts, event(1))
    assert "groups" in ask(parts, "status")["cluster"]
    assert ask(parts, "status", offset=1)["cluster"] == {}


def test_history_filters_and_pages(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "PAGE", 2)
    journal_events(parts, event(1), event(2, state="BACKUP"), event(3, state="BACKUP"),
                   event(4, host="lb2"), event(5, state="MASTER"))
    page = ask(parts, "history", limit=10, host="lb1")
    assert [e["id"] for e in page["events"]] == ["event-00000005", "event-00000003"]
    assert page["next_before"] == page["events"][-1]["rowid"]
    rest = ask(parts, "history", limit=8, host="lb1", before=page["next_before"])
    assert [e["id"] for e in rest["events"]] == ["event-00000002", "event-00000001"]
    moves = ask(parts, "history", limit=2, transitions=True)
    assert [e["id"] for e in moves["events"]] == ["event-00000005", "event-00000004"]
    assert moves["next_before"] is None  # asked for no more than a page
    one = ask(parts, "history", id="event-0000000")
    assert len(one["events"]) == 2  # limit 50, a page of 2: the id prefix matches all
    assert all(e["alerts"] == [] for e in one["events"])  # the outbox attached its part


def test_reload_answers_what_the_router_did(parts: Parts) -> None:
    assert ask(parts, "reload") == {"v": 1, "ok": True, "detail": "config reloaded: 0 rules"}
    parts.reload_answer = (False, "new config refused, old one kept: bad")
    assert ask(parts, "reload") == {"v": 1, "ok": False,
                                    "error": "new config refused, old one kept: bad"}
    assert not parts.rejected  # a refused config is an answer, not a bad request


def test_heartbeat_and_peer_forget_go_to_the_cluster_monitor(parts: Parts) -> None:
    with_cluster(parts)
    beat = ask(parts, "heartbeat", host="lb2", ts_ns=time.time_ns(), interval_s=5)
    assert beat == {"v": 1, "ok": True, "host": "lb2", "silent_after_s": 30.0}
    assert parts.cluster is not None and parts.cluster.heartbeats == 1
    assert ask(parts, "peer_forget", host="lb9") == {
        "v": 1, "ok": False, "error": "'lb9' is not a watched peer"}
    assert ask(parts, "peer_forget")["error"] == "peer_forget needs 'host' (a string)"


def test_silences_through_the_alert_engine(parts: Parts) -> None:
    with_alerts(parts)
    journal_events(parts, event(1), event(2, host="lb2", name="VI_2"))
    added = ask(parts, "silence_add", matchers=["name=VI_1"], duration_s=3600,
                reason="maintenance; `reboot`", by="ops")
    silence = added["silence"]
    assert silence["matchers"] == ["name=VI_1"] and silence["reason"] == "maintenance; `reboot`"
    assert added["matching"] == [{"host": "lb1", "kind": "INSTANCE", "name": "VI_1", "vs": "",
                                  "state": "MASTER"}]
    listed = ask(parts, "silence_list")["silences"]
    assert [s["id"] for s in listed] == [silence["id"]]
    expired = ask(parts, "silence_expire", id=silence["id"])["silence"]
    assert expired["status"] == "expired"
    assert ask(parts, "silence_list")["silences"] == []
    assert [s["status"] for s in ask(parts, "silence_list", all=True)["silences"]] == ["expired"]
    figures = ask(parts, "alerts")["alerts"]
    assert figures["silences_active"] == 0
