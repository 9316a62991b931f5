"""Router peering in-process: the pure gate and position, the notification log and
silence replication (real SQLite journals), and the Peers service with an injected clock.

The two-router tests with real processes are in tests/test_peers_routers.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

from knotify.alerts.silence import SilenceStore
from knotify.cluster.settings import ClusterSettings
from knotify.errors import WireError
from knotify.peers import gate
from knotify.peers.service import Peers
from knotify.peers.settings import PeerRouter, PeerSettings
from knotify.store.db import Database
from knotify.store.nflog import Entry, NotificationLog
from knotify.store.outbox import Outbox
from knotify.store.silences import SilenceRows
from knotify.tracker import KeyState, Tracker

S = 1_000_000_000
T0 = 1_700_000_000 * S
WINDOW = 60 * S
HOSTS = {"lb1": "lb1", "lb2": "lb2", "lb3": "lb3"}
ORDER = ("lb1", "lb2", "lb3")


def entry(uid: str, facts: list[tuple[str, int]], by: str = "lb2", sent: int = T0,
          group: str = "g", receiver: str = "chat", expires: int = T0 + 3600 * S) -> Entry:
    return Entry(uid, group, receiver, tuple(facts), sent, by, expires)


# -- position ------------------------------------------------------------------------------

def test_the_router_beside_the_master_goes_first() -> None:
    assert gate.position("lb2", ORDER, HOSTS, {"lb2"}, {}) == (0, ())
    assert gate.position("lb1", ORDER, HOSTS, {"lb2"}, {}) == (1, ("lb2",))
    assert gate.position("lb3", ORDER, HOSTS, {"lb2"}, {}) == (2, ("lb2", "lb1"))


def test_without_a_master_the_order_decides() -> None:
    assert gate.position("lb1", ORDER, HOSTS, set(), {}) == (0, ())
    assert gate.position("lb3", ORDER, HOSTS, {"elsewhere"}, {}) == (2, ("lb1", "lb2"))


def test_split_brain_first_master_in_order_goes_first() -> None:
    assert gate.position("lb2", ORDER, HOSTS, {"lb3", "lb2"}, {}) == (0, ())
    assert gate.position("lb3", ORDER, HOSTS, {"lb3", "lb2"}, {}) == (2, ("lb2", "lb1"))


def test_router_host_names_map_routers_to_keepalived_hosts() -> None:
    hosts = {"r1": "node1", "r2": "node2"}
    assert gate.position("r1", ("r1", "r2"), hosts, {"node2"}, {}) == (1, ("r2",))


def test_unreachable_routers_are_not_waited_for() -> None:
    assert gate.position("lb1", ORDER, HOSTS, {"lb2"}, {"lb2": False}) == (0, ())
    assert gate.position("lb3", ORDER, HOSTS, {"lb2"}, {"lb2": False, "lb1": True}) \
        == (1, ("lb1",))


# -- facts and covering ----------------------------------------------------------------------

def test_event_facts_are_ids_and_cluster_view_facts_are_what_they_say() -> None:
    inst = {"kind": "INSTANCE", "id": "e1", "host": "lb1", "name": "VI_1", "state": "MASTER"}
    assert gate.fact("firing", inst) == "firing|e1"
    assert gate.fact("repeat", inst) == "repeat|e1"
    a = {"kind": "CLUSTER", "id": "x", "host": "lb1", "name": "VI_1", "state": "SPLIT_BRAIN",
         "from": "CLUSTER_OK", "vs": ""}
    b = {**a, "id": "y", "host": "lb2"}  # the other router's own event of the same news
    assert gate.fact("firing", a) == gate.fact("firing", b)
    assert gate.facts([("firing", inst), ("firing", inst), ("firing", a)]) == (
        "firing|e1", gate.fact("firing", a))


def test_covering_is_the_union_of_peer_entries() -> None:
    entries = [entry("lb2/1", [("f|a", T0)], sent=T0 + 1),
               entry("lb2/2", [("f|b", T0)], sent=T0 + 2)]
    assert gate.covering(entries, ["f|a", "f|b"], T0, WINDOW, "lb1") == entries[1]
    assert gate.covering(entries, ["f|a", "f|c"], T0, WINDOW, "lb1") is None
    assert gate.covering(entries, [], T0, WINDOW, "lb1") is None


def test_own_entries_and_old_news_do_not_cover() -> None:
    own = [entry("lb1/1", [("f|a", T0)], by="lb1")]
    assert gate.covering(own, ["f|a"], T0, WINDOW, "lb1") is None
    old = [entry("lb2/1", [("f|a", T0 - 2 * WINDOW)])]
    assert gate.covering(old, ["f|a"], T0, WINDOW, "lb1") is None


def decide(now: int, entries: list[Entry] | None = None, me: str = "lb1",
           masters: set[str] | None = None,
           reachable: dict[str, bool] | None = None) -> gate.Verdict:
    return gate.decide(me=me, entries=entries or [], wanted=["f|a"], made_ns=T0, now_ns=now,
                       window_ns=WINDOW, peer_timeout_s=15.0, order=ORDER[:2],
                       hosts=HOSTS, masters=masters or {"lb2"}, reachable=reachable or {})


def test_decide_waits_position_times_peer_timeout_from_when_the_message_was_made() -> None:
    waiting = decide(T0 + 5 * S)
    assert waiting.until_ns == T0 + 15 * S and not waiting.sends(T0 + 5 * S)
    assert waiting.position == 1 and waiting.ahead == ("lb2",)
    assert decide(T0 + 15 * S).sends(T0 + 15 * S)
    assert decide(T0, me="lb2").sends(T0)


def test_decide_skips_what_a_peer_sent_whatever_the_position() -> None:
    sent = [entry("lb2/7", [("f|a", T0)])]
    for now in (T0, T0 + 20 * S):
        verdict = decide(now, sent)
        assert verdict.peer == "lb2" and not verdict.sends(now)
        assert "sent by peer lb2" in verdict.detail
    assert decide(T0, sent, me="lb2").sends(T0)  # its own entry never stops a router


def test_decide_fails_open_when_the_peer_is_unreachable() -> None:
    assert decide(T0 + S, reachable={"lb2": False}).sends(T0 + S)


# -- the notification log store ---------------------------------------------------------------

def test_log_rows_are_written_once_and_change_numbers_are_never_reused(tmp_path: Path) -> None:
    log = NotificationLog(Database(str(tmp_path / "j.db")))
    assert log.put(entry("lb2/1", [("f|a", T0)], expires=T0 + S))
    assert not log.put(entry("lb2/1", [("f|a", T0)]))  # the same row again: nothing
    assert log.put(entry("lb2/2", [("f|b", T0)]))
    assert log.last_change() == 2
    rows, upto = log.since(0, T0)
    assert [(c, r.uid) for c, r in rows] == [(1, "lb2/1"), (2, "lb2/2")] and upto == 2
    assert log.since(0, T0 + 2 * S) == ([(2, entry("lb2/2", [("f|b", T0)]))], 2)
    assert [e.uid for e in log.group("g", "chat", T0 + 2 * S)] == ["lb2/2"]
    assert log.prune(T0 + 2 * S) == 1
    log.put(entry("lb2/3", [("f|c", T0)]))
    assert log.last_change() == 3  # the pruned row's number is not given again
    assert log.since(2, T0)[0][0][1].uid == "lb2/3"


def test_a_newer_nflog_schema_is_refused(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "j.db"))
    db.set_version("nflog", 99)
    with pytest.raises(Exception, match="newer than this knotify"):
        NotificationLog(db)


@pytest.mark.parametrize(("data", "reason"), [
    ([], "must be an object"),
    ({"uid": 1}, "'uid' must be a string"),
    ({"uid": "a", "group_key": "g", "receiver": "r", "sent_by": "x", "sent_ns": -1,
      "expires_ns": 1, "facts": []}, "'sent_ns'"),
    ({"uid": "a", "group_key": "g", "receiver": "r", "sent_by": "x", "sent_ns": 1,
      "expires_ns": 1, "facts": [["f"]]}, "'facts'"),
    ({"uid": "a", "group_key": "g", "receiver": "r", "sent_by": "x", "sent_ns": 1,
      "expires_ns": True, "facts": []}, "'expires_ns'"),
])
def test_malformed_log_entries_from_a_peer_are_refused(data: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Entry.from_wire(data)


def test_entries_survive_the_wire() -> None:
    e = entry("lb2/1", [("f|a", T0), ("f|b", T0 + 1)])
    assert Entry.from_wire(e.to_wire()) == e


# -- silences ---------------------------------------------------------------------------------

def test_silences_converge_whatever_order_routers_hear_of_them(tmp_path: Path) -> None:
    a = SilenceRows(Database(str(tmp_path / "a.db")))
    b = SilenceRows(Database(str(tmp_path / "b.db")))
    sid = a.add(["name=VI_1"], T0, T0 + 3600 * S, T0, "ops", "maintenance")
    [(_, row)] = a.since(0)[0]
    assert b.merge(row) and not b.merge(row)  # the second time: nothing changes
    [(_, copy)] = b.since(0)[0]
    assert copy.uid == row.uid and copy.matchers == ["name=VI_1"]
    b.set_expired(copy.id, T0 + 10 * S)  # expired on the other router
    [(_, expired)] = b.since(1)[0]
    assert a.merge(expired) and a.get(sid) is not None
    assert a.get(sid).expired_ns == T0 + 10 * S  # type: ignore[union-attr]
    assert not a.merge(row)  # an older copy does not bring it back
    assert a.get(sid).expired_ns == T0 + 10 * S  # type: ignore[union-attr]


def test_an_older_journals_silences_get_a_uid(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE silences (id INTEGER PRIMARY KEY, matchers TEXT NOT NULL, "
                     "starts_ns INTEGER NOT NULL, ends_ns INTEGER NOT NULL, created_ns "
                     "INTEGER NOT NULL, created_by TEXT NOT NULL DEFAULT '', reason TEXT NOT "
                     "NULL DEFAULT '', expired_ns INTEGER);"
                     "INSERT INTO silences (matchers, starts_ns, ends_ns, created_ns) VALUES "
                     "('[\"host=*\"]', 1, 2, 3);")
    db.commit()
    db.close()
    rows = SilenceRows(Database(str(path)))
    [old] = rows.every()
    assert old.uid == "j3-1"
    assert rows.add(["host=x"], 1, 2, 4, "", "r") == 2 and rows.last_change() == 1


# -- the Peers service, in-process with an injected clock ----------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    info = warning = error = exception = _add


def make(tmp_path: Path, me: str, other: str, clock: Clock,
         states: dict[Any, KeyState] | None = None,
         settled: bool = True) -> tuple[Peers, Outbox, Log]:
    db = Database(str(tmp_path / f"{me}.db"))
    outbox = Outbox(db)
    silences = SilenceStore(SilenceRows(db))
    settings = PeerSettings(me, me, 15.0, ("lb1", "lb2"),
                            (PeerRouter(other, "ipc:///nonexistent/x.sock", other),))
    tracker = Tracker(states or {})
    log = Log()
    peers = Peers(settings, db, outbox, silences, lambda: tracker, ClusterSettings, log,
                  zmq.asyncio.Context.instance(), None, clock=clock)
    if settled:  # the first exchange with the peer has ended (it answered)
        peers.links[other].note("ok", clock())
    return peers, outbox, log


def ks(state: str) -> KeyState:
    return KeyState(state, 100, T0, "e", 1, 1, T0)


def message(outbox: Outbox, event_id: str, made: int) -> int:
    fields = {"kind": "INSTANCE", "host": "lb2", "name": "VI_1", "state": "MASTER",
              "id": event_id, "from": "BACKUP", "vs": ""}
    item = outbox.add_item(run=None, event_id=event_id, receiver="chat", stream="page#0",
                           alert="firing", status="composed", detail=None, group_key="g",
                           fields=fields, spec={}, created_ns=made, due_ns=made)
    rowid = outbox.add_message("chat", "firing", "t", "b", "info", [event_id], made,
                               group_key="g")
    outbox.set_items([item], "composed", message=rowid)
    return rowid


def wire(peers: Peers, other: str) -> dict[str, Any]:
    """What ``peers`` sends ``other`` in its next exchange."""
    body, _, _ = peers.rows_after(peers.links[other].sent, peers.clock())
    return {"from": peers.me, **body, "want": dict(peers.links[other].got)}


def test_a_peer_that_sent_a_message_makes_the_other_skip_it(tmp_path: Path) -> None:
    clock = Clock()
    states = {("lb2", "INSTANCE", "VI_1", ""): ks("MASTER"),
              ("lb1", "INSTANCE", "VI_1", ""): ks("BACKUP")}
    lb1, out1, log1 = make(tmp_path, "lb1", "lb2", clock, states)
    lb2, out2, _ = make(tmp_path, "lb2", "lb1", clock, states)
    m1, m2 = message(out1, "e1", T0), message(out2, "e1", T0)
    v1 = lb1.gate(out1.message(m1), T0)  # type: ignore[arg-type]
    v2 = lb2.gate(out2.message(m2), T0)  # type: ignore[arg-type]
    assert v2.sends(T0) and v1.position == 1 and v1.until_ns == T0 + 15 * S
    clock.now = T0 + 2 * S
    with lb2.database.transaction():
        lb2.sent(out2.message(m2), clock.now)  # type: ignore[arg-type]
    answer = lb1.command("peer_sync", wire(lb2, "lb1"))  # lb2 pushes its log to lb1
    assert answer["name"] == "lb1" and answer["upto"] == {"nflog": 1, "silences": 0}
    verdict = lb1.gate(out1.message(m1), clock.now)  # type: ignore[arg-type]
    assert verdict.peer == "lb2"
    lb1.skip(out1.message(m1), verdict, clock.now)  # type: ignore[arg-type]
    skipped = out1.message(m1)
    assert skipped is not None and skipped.status == "sent_by_peer"
    assert "lb2" in (skipped.detail or "")
    assert lb1.deduped == {"chat": 1}
    assert ("alert.sent_by_peer", {"event_ids": ["e1"], "message": m1, "receiver": "chat",
                                   "peer": "lb2"}) in log1.lines


def test_a_started_router_sends_nothing_before_its_first_exchange_with_each_peer(
        tmp_path: Path) -> None:
    # lb2's router restarts while lb1's router (position 1 before) already sent the
    # page: lb2 is now position 0, but must first hear lb1's log, then skip the message.
    clock = Clock()
    states = {("lb2", "INSTANCE", "VI_1", ""): ks("MASTER"),
              ("lb1", "INSTANCE", "VI_1", ""): ks("BACKUP")}
    lb1, out1, _ = make(tmp_path, "lb1", "lb2", clock, states)
    m1 = message(out1, "e1", T0)
    with lb1.database.transaction():
        lb1.sent(out1.message(m1), T0)  # type: ignore[arg-type]
    clock.now = T0 + 1 * S
    lb2, out2, _ = make(tmp_path, "lb2", "lb1", clock, states, settled=False)
    m2 = message(out2, "e1", T0)
    early = lb2.gate(out2.message(m2), clock.now)  # type: ignore[arg-type]
    assert early.peer is None and early.until_ns > clock.now
    assert "first exchange with lb1" in early.detail
    # The first exchange: lb1 answers with its log.
    lb2.merge(lb2.links["lb1"], wire(lb1, "lb2"))
    lb2.links["lb1"].note("ok", clock.now)
    assert lb2.gate(out2.message(m2), clock.now).peer == "lb1"  # type: ignore[arg-type]


def test_a_peer_that_never_answers_holds_a_started_router_back_only_a_little(
        tmp_path: Path) -> None:
    clock = Clock()
    lb2, out2, _ = make(tmp_path, "lb2", "lb1", clock, settled=False)
    m2 = message(out2, "e1", T0)
    assert not lb2.gate(out2.message(m2), T0).sends(T0)  # type: ignore[arg-type]
    clock.now = T0 + 6 * S  # past SETTLE_S without an exchange ending: position decides
    later = lb2.gate(out2.message(m2), clock.now)  # type: ignore[arg-type]
    assert "first exchange" not in later.detail and later.ahead == ("lb1",)
    lb2.links["lb1"].note("timeout", clock.now, "no answer")  # ended, unanswered: sends
    assert lb2.gate(out2.message(m2), clock.now).sends(clock.now)  # type: ignore[arg-type]


def test_peer_sync_replies_with_what_the_peer_has_not_had(tmp_path: Path) -> None:
    clock = Clock()
    lb1, _, _ = make(tmp_path, "lb1", "lb2", clock)
    lb2, _, _ = make(tmp_path, "lb2", "lb1", clock)
    lb1.silences.add(["name=VI_1"], 3600, "maintenance", "ops")
    answer = lb1.command("peer_sync", wire(lb2, "lb1"))
    assert [s["matchers"] for s in answer["silences"]] == [["name=VI_1"]]
    lb2.merge(lb2.links["lb1"], answer)
    assert [s.matchers[0].text for s in lb2.silences.list()] == ["name=VI_1"]
    # Expired on lb2: lb1 hears of it in lb2's next exchange, and both agree.
    [copy] = lb2.silences.list()
    lb2.silences.expire(copy.id)
    lb2.links["lb1"].got = answer["upto"]
    lb1.command("peer_sync", wire(lb2, "lb1"))
    assert lb1.silences.list() == [] and lb2.silences.list() == []


@pytest.mark.parametrize(("msg", "reason"), [
    ({"from": "lb9", "want": {"nflog": 0, "silences": 0}}, "not in this router's"),
    ({"from": 3, "want": {"nflog": 0, "silences": 0}}, "not in this router's"),
    ({"from": "lb2"}, "'want'"),
    ({"from": "lb2", "want": {"nflog": -1, "silences": 0}}, "'want'"),
    ({"from": "lb2", "want": {"nflog": 0, "silences": 0}, "nflog": {}}, "must be lists"),
    ({"from": "lb2", "want": {"nflog": 0, "silences": 0}, "nflog": [{"uid": "x"}]},
     "must be a string"),
    ({"from": "lb2", "want": {"nflog": 0, "silences": 0},
      "silences": [{"uid": "u", "matchers": ["$(reboot)"]}]}, "FIELD=VALUE"),
    ({"from": "lb2", "want": {"nflog": 0, "silences": 0},
      "silences": [{"uid": "u", "matchers": ["host=x"], "starts_ns": "soon"}]}, "starts_ns"),
])
def test_malformed_peer_sync_is_refused_and_nothing_is_merged(
        tmp_path: Path, msg: dict[str, Any], reason: str) -> None:
    lb1, _, _ = make(tmp_path, "lb1", "lb2", Clock())
    good = entry("lb2/1", [("f|a", T0)]).to_wire()
    if "nflog" in msg and isinstance(msg["nflog"], list):
        msg = {**msg, "nflog": [good, *msg["nflog"]]}
    with pytest.raises(WireError, match=reason):
        lb1.command("peer_sync", msg)
    assert lb1.nflog.count() == 0 and lb1.silences.list() == []


def test_a_peer_ahead_of_a_new_journal_gets_everything(tmp_path: Path) -> None:
    lb1, _, _ = make(tmp_path, "lb1", "lb2", Clock())
    lb1.silences.add(["name=VI_1"], 3600, "maintenance", "ops")
    answer = lb1.command("peer_sync", {"from": "lb2", "want": {"nflog": 50, "silences": 50}})
    assert len(answer["silences"]) == 1


def test_status_info_shows_positions_lag_and_reachability(tmp_path: Path) -> None:
    clock = Clock()
    states = {("lb2", "INSTANCE", "VI_1", ""): ks("MASTER"),
              ("lb1", "INSTANCE", "VI_1", ""): ks("BACKUP"),
              ("lb1", "INSTANCE", "VI_2", ""): ks("MASTER")}
    lb1, _, _ = make(tmp_path, "lb1", "lb2", clock, states, settled=False)
    lb1.silences.add(["name=VI_1"], 3600, "maintenance", "ops")
    info = lb1.info()
    assert info["positions"] == {"VI_1": 1, "VI_2": 0}
    [peer] = info["routers"]
    assert peer["up"] is None and peer["lag"] == {"nflog": 0, "silences": 1}
    lb1.links["lb2"].note("timeout", clock.now, "no answer")
    lb1._view_cache = None  # (the view is cached for 0.2 s)
    assert lb1.info()["positions"] == {"VI_1": 0, "VI_2": 0}  # fail-open


def test_metrics_show_peer_routers_exchanges_and_deduped_messages(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from knotify.metrics import RouterCollector, Snapshot

    clock = Clock()
    lb1, _, _ = make(tmp_path, "lb1", "lb2", clock, settled=False)
    lb1.links["lb2"].note("ok", clock.now)
    clock.now += 3 * S
    lb1.links["lb2"].note("timeout", clock.now, "no answer")
    lb1.deduped["chat"] = 2
    collector = RouterCollector()
    collector.snap = Snapshot(states=[], stats={}, faults={}, loops={}, actions={}, queued=0,
                              running=0, spool_depth=0, alerts={}, cluster=None, heartbeats=0,
                              peers=lb1.info())
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'knotify_router_peer_up{peer="lb2"} 0.0' in text
    assert 'knotify_router_peer_sync_total{peer="lb2",result="ok"} 1.0' in text
    assert 'knotify_router_peer_sync_total{peer="lb2",result="timeout"} 1.0' in text
    assert 'knotify_router_peer_sync_total{peer="lb2",result="refused"} 0.0' in text
    assert 'knotify_router_peer_last_sync_seconds{peer="lb2"} 3.0' in text
    assert 'knotify_alerts_deduped_total{receiver="chat"} 2.0' in text


def test_large_logs_go_in_parts_that_fit_a_peers_max_message(tmp_path: Path) -> None:
    from knotify.event import encode

    clock = Clock()
    lb1, _, _ = make(tmp_path, "lb1", "lb2", clock)
    lb2, _, _ = make(tmp_path, "lb2", "lb1", clock)
    lb2.max_message = 64 * 1024
    facts = [(f"firing|{i:032x}", T0) for i in range(200)]  # ~10 KB an entry
    with lb2.database.transaction():
        for n in range(50):
            lb2.nflog.put(entry(f"lb2/{n}", facts))
    link = lb2.links["lb1"]
    exchanges = 0
    while True:
        body, upto, more = lb2.rows_after(link.sent, clock.now)
        request = {"v": 1, "op": "peer_sync", "from": "lb2", **body, "want": link.got}
        assert len(encode(request)) < lb2.max_message
        lb1.command("peer_sync", request)
        link.sent = upto
        exchanges += 1
        if not more:
            break
    assert lb1.nflog.count() == 50 and exchanges > 5


def test_a_failing_gate_sends_rather_than_holding_the_page(tmp_path: Path) -> None:
    clock = Clock()
    lb1, out1, log1 = make(tmp_path, "lb1", "lb2", clock)
    m = out1.message(message(out1, "e1", T0))
    assert m is not None

    def broken() -> Any:
        raise RuntimeError("a bug")
    lb1._tracker = broken
    lb1._view_cache = None
    verdict = lb1.gate(m, T0)
    assert verdict.sends(T0) and "failed" in verdict.detail
    assert lb1.crashed == 1 and log1.lines[-1][0] == "peer.gate_crashed"


def test_the_web_timeline_shows_a_message_a_peer_sent_as_sent() -> None:
    from knotify.web.data import alert_outcome

    assert alert_outcome("composed", {"status": "sent_by_peer", "attempts": []}) == "sent"
