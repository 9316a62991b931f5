"""The cluster detector with plain values: states in, CLUSTER and PEER events out."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest

from knotify import config as configmod
from knotify import spool
from knotify.cluster import heartbeat
from knotify.cluster.detect import Detector
from knotify.cluster.settings import ClusterSettings, GroupSpec
from knotify.errors import ConfigError, WireError
from knotify.event import Event, Key
from knotify.rules import Pattern
from knotify.templates import iso_time
from knotify.tracker import KeyState, Tracker
from knotify.vocab import (
    CLUSTER_OK,
    MASTER_BACK,
    NO_MASTER,
    PEER_BACK,
    PEER_SILENT,
    SPLIT_BRAIN,
    SPLIT_BRAIN_RESOLVED,
)

S = 1_000_000_000  # one second in ns


def on(**settings: Any) -> ClusterSettings:
    return ClusterSettings(**{"enabled": True, **settings})
T0 = 1_800_000_000 * S


class World:
    """Hosts' instance states, a clock, and a detector fed like the router feeds it."""

    def __init__(self, settings: ClusterSettings | None = None, peers: tuple[str, ...] = (),
                 states: dict[Key, KeyState] | None = None) -> None:
        self.now = T0
        self.tracker = Tracker(states or {})
        ids = itertools.count(1)
        self.detector = Detector(settings or on(), "router", self.now,
                                 self.tracker.states, peers, new_id=lambda: f"id{next(ids):06d}")
        self.seq = itertools.count(1)
        self.journal: list[Event] = []

    def report(self, host: str, name: str, state: str, kind: str = "INSTANCE") -> None:
        ev = Event(id=f"ev{next(self.seq):06d}", host=host, kind=kind, name=name, state=state,
                   prio=100, seq=next(self.seq), ts_ns=self.now, source="hook",
                   recv_ns=self.now)
        tr = self.tracker.observe(ev)
        self.detector.observe(ev, tr, self.now)

    def beat(self, host: str) -> None:
        self.detector.heard(host, self.now, heartbeat.Heartbeat(host, self.now, 1.0, 0))

    def tick(self, seconds: float = 0.0, confirm: bool = True) -> list[tuple[str, str, str]]:
        """Advance the clock, tick, journal what came out; (kind, name, state) of each."""
        self.now += int(seconds * S)
        events = self.detector.tick(self.tracker.states, self.now)
        if confirm:
            for ev in events:
                self.tracker.observe(ev)
            self.detector.confirm(events)
            self.journal.extend(events)
        return [(e.kind, e.name, e.state) for e in events]

    def run(self, seconds: float, step: float = 0.5,
            every: Any = None) -> list[tuple[str, str, str]]:
        out = []
        for _ in range(int(seconds / step)):
            if every is not None:
                every()
            out += self.tick(step)
        return out


def three_nodes(world: World, master: str = "n1") -> None:
    for host in ("n1", "n2", "n3"):
        world.report(host, "VI_1", "MASTER" if host == master else "BACKUP")


# ------------------------------------------------------------------------- split brain


def test_two_masters_longer_than_the_grace_is_a_split_brain_then_resolved() -> None:
    w = World(on(split_brain_grace=5))
    three_nodes(w)
    assert w.run(10) == []
    w.report("n2", "VI_1", "MASTER")
    assert w.run(5) == []  # the grace counts from the first tick that sees it
    assert w.tick(0.5) == [("CLUSTER", "VI_1", SPLIT_BRAIN)]
    ev = w.journal[-1]
    assert (ev.host, ev.source, ev.extra["masters"]) == ("router", "cluster", ["n1", "n2"])
    assert "n1, n2 are all MASTER" in ev.extra["detail"] and "n3 BACKUP" in ev.extra["detail"]
    assert w.run(30) == []  # raised once, not repeated
    w.report("n2", "VI_1", "BACKUP")
    assert w.tick(0.5) == [("CLUSTER", "VI_1", SPLIT_BRAIN_RESOLVED)]
    assert "n1 is the only MASTER" in w.journal[-1].extra["detail"]
    assert w.run(30) == []


def test_a_dual_master_shorter_than_the_grace_says_nothing() -> None:
    w = World(on(split_brain_grace=5))
    three_nodes(w)
    w.tick(1)
    # a failover seen out of order: the new MASTER before the old one's STOP
    w.report("n2", "VI_1", "MASTER")
    assert w.run(2) == []
    w.report("n1", "VI_1", "STOP")
    assert w.run(30) == []


def test_master_rx_lower_pri_lines_are_evidence_of_a_split_brain() -> None:
    # One router hears only n1 (n2 reports elsewhere), but n1 keeps hearing lower-priority
    # adverts: the FIFO repeats MASTER_RX_LOWER_PRI once per advert interval.
    w = World(on(split_brain_grace=5, rx_lower_pri_window=3))
    w.report("n1", "VI_1", "MASTER")
    w.tick(1)
    w.report("n1", "VI_1", "MASTER_RX_LOWER_PRI")  # a single one: a node starting up
    assert w.run(10) == []
    raised = w.run(8, step=1, every=lambda: w.report("n1", "VI_1", "MASTER_RX_LOWER_PRI"))
    assert raised == [("CLUSTER", "VI_1", SPLIT_BRAIN)]
    assert "n1 hears a lower-priority MASTER" in w.journal[-1].extra["detail"]
    assert w.journal[-1].extra["evidence"] == ["n1"]
    assert w.run(2) == []  # within the window
    assert w.run(1) == [("CLUSTER", "VI_1", SPLIT_BRAIN_RESOLVED)]


def test_a_watched_masters_stale_claim_needs_a_sign_of_life_to_count() -> None:
    # n1 was MASTER and died (no STOP); n2 took over. n1 heartbeated before: until it is
    # heard from again its old MASTER is not a second master.
    w = World(on(split_brain_grace=2, silent_after=10))
    for host in ("n1", "n2"):
        w.beat(host)
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "BACKUP")
    w.tick(1)
    w.report("n2", "VI_1", "MASTER")
    out = w.run(12, every=lambda: w.beat("n2"))
    assert out == [("PEER", "n1", PEER_SILENT)]
    # n1 was only cut off: it comes back, still MASTER, and now it is a split brain.
    w.beat("n1")
    def both() -> None:
        w.beat("n1")
        w.beat("n2")

    out = w.run(3, every=both)
    assert out == [("PEER", "n1", PEER_BACK), ("CLUSTER", "VI_1", SPLIT_BRAIN)]


def test_hosts_that_do_not_heartbeat_are_taken_at_their_word() -> None:
    w = World(on(split_brain_grace=2))
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "MASTER")
    assert w.run(3) == [("CLUSTER", "VI_1", SPLIT_BRAIN)]


# ------------------------------------------------------------------------- no master


def test_every_member_stopped_longer_than_the_grace_is_no_master() -> None:
    w = World(on(no_master_grace=10))
    three_nodes(w)
    w.tick(1)
    for host in ("n1", "n2", "n3"):
        w.report(host, "VI_1", "STOP")
    assert w.run(10) == []
    assert w.tick(0.5) == [("CLUSTER", "VI_1", NO_MASTER)]
    assert "n1 STOP, n2 STOP, n3 STOP" in w.journal[-1].extra["detail"]
    assert w.run(30) == []
    w.report("n2", "VI_1", "BACKUP")
    w.report("n2", "VI_1", "MASTER")
    assert w.tick(0.5) == [("CLUSTER", "VI_1", MASTER_BACK)]
    assert w.journal[-1].extra["detail"].startswith("VI_1: n2 is MASTER")


def test_start_up_backup_before_the_election_is_not_no_master() -> None:
    w = World(on(no_master_grace=10))
    for host in ("n1", "n2"):
        w.report(host, "VI_1", "BACKUP")
    assert w.run(4) == []
    w.report("n1", "VI_1", "MASTER")
    assert w.run(30) == []


def test_a_lone_backup_says_nothing_about_the_cluster() -> None:
    # a local router hears its own host only: BACKUP there is normal
    w = World(on(no_master_grace=1))
    w.report("n1", "VI_1", "BACKUP")
    w.report("n1", "VI_2", "FAULT")
    assert w.run(30) == []
    assert w.detector.view(w.tracker.states, w.now)["groups"] == []


def test_min_members_and_deleted_instances() -> None:
    w = World(on(no_master_grace=1, min_members=3))
    for host in ("n1", "n2"):
        w.report(host, "VI_1", "BACKUP")
    assert w.run(5) == []
    w.report("n3", "VI_1", "BACKUP")
    assert w.run(2) == [("CLUSTER", "VI_1", NO_MASTER)]
    # The instance is removed from every host's config: nothing left to be master of.
    for host in ("n1", "n2", "n3"):
        w.report(host, "VI_1", "DELETED")
    assert w.tick(0.5) == [("CLUSTER", "VI_1", CLUSTER_OK)]
    assert "no host reports it" in w.journal[-1].extra["detail"]


def test_a_silent_master_does_not_count_as_a_master() -> None:
    # n1 (MASTER) went silent and n2 did not take over: as far as anyone can tell,
    # nobody serves the address.
    w = World(on(no_master_grace=2, silent_after=5))
    for host in ("n1", "n2"):
        w.beat(host)
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "BACKUP")
    out = w.run(9, every=lambda: w.beat("n2"))
    assert out == [("PEER", "n1", PEER_SILENT), ("CLUSTER", "VI_1", NO_MASTER)]
    assert "n1 MASTER (silent)" in w.journal[-1].extra["detail"]
    w.beat("n1")
    assert w.tick(0.5) == [("PEER", "n1", PEER_BACK), ("CLUSTER", "VI_1", MASTER_BACK)]


# ------------------------------------------------------------------------- peers


def test_a_host_that_heartbeats_is_watched_silent_then_back() -> None:
    w = World(on(silent_after=5))
    w.beat("n3")
    assert w.detector.new_watched == ["n3"]
    assert w.run(5) == []
    assert w.tick(0.5) == [("PEER", "n3", PEER_SILENT)]
    ev = w.journal[-1]
    assert (ev.host, ev.name, ev.kind) == ("n3", "n3", "PEER")
    # Names the host and since when, with the date and the UTC offset.
    assert ev.extra["detail"] == f"n3: not heard from since {iso_time(T0)} (5.5s)"
    assert w.run(60) == []
    w.report("n3", "VI_1", "BACKUP")  # an event counts as much as a heartbeat
    assert w.tick(0.5) == [("PEER", "n3", PEER_BACK)]
    assert w.run(4) == []


def test_hosts_heard_only_through_events_are_not_watched() -> None:
    w = World(on(silent_after=5))
    w.report("n1", "VI_1", "MASTER")
    assert w.run(600, step=10) == []


def test_configured_peers_are_watched_from_the_router_start() -> None:
    w = World(on(silent_after=5, peers=("n9",)))
    assert w.run(6) == [("PEER", "n9", PEER_SILENT)]
    assert w.journal[-1].extra["detail"] == (
        f"n9: not heard from since {iso_time(T0)}, when the router began to watch it (5.5s)")


def test_forgetting_a_peer_ends_its_watch() -> None:
    w = World(on(silent_after=5))
    w.beat("old")
    assert w.run(6) == [("PEER", "old", PEER_SILENT)]
    [ev] = w.detector.forget("old", w.now)
    assert (ev.kind, ev.host, ev.state) == ("PEER", "old", CLUSTER_OK)
    assert w.detector.forget("old", w.now) == []
    assert w.run(60) == []


# ------------------------------------------------------------------------- restart, failure


def test_after_a_restart_raised_conditions_are_resolved_or_kept() -> None:
    w = World(on(split_brain_grace=1, silent_after=5))
    w.beat("n3")
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "MASTER")
    w.report("n3", "VI_1", "BACKUP")
    out = w.run(8, every=lambda: w.beat("n1"))
    assert out == [("CLUSTER", "VI_1", SPLIT_BRAIN), ("PEER", "n3", PEER_SILENT)]
    w.report("n2", "VI_1", "BACKUP")  # while the router is down
    states = w.tracker.states
    # A new router on the same journal: the split is over, n3 is still silent.
    w2 = World(on(split_brain_grace=1, silent_after=5), states=states)
    w2.now = w.now + 60 * S
    assert w2.tick(0.5) == [("CLUSTER", "VI_1", SPLIT_BRAIN_RESOLVED)]
    assert w2.run(30) == []  # n3 stays silent, not raised twice
    w2.beat("n3")
    assert w2.tick(0.5) == [("PEER", "n3", PEER_BACK)]


def test_persisted_peers_are_watched_again_with_the_clock_from_start() -> None:
    w = World(on(silent_after=5), peers=("n1",))
    assert w.run(5) == []
    assert w.tick(0.5) == [("PEER", "n1", PEER_SILENT)]


def test_events_not_confirmed_are_made_again() -> None:
    w = World(on(split_brain_grace=1))
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "MASTER")
    w.tick(1)
    assert w.tick(1, confirm=False) == [("CLUSTER", "VI_1", SPLIT_BRAIN)]
    assert w.tick(0.5) == [("CLUSTER", "VI_1", SPLIT_BRAIN)]  # the journal failed: again
    assert w.tick(0.5) == []


def test_disabled_detects_nothing() -> None:
    w = World(ClusterSettings(split_brain_grace=1, silent_after=1))
    w.beat("n1")
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "MASTER")
    assert w.run(10) == []


# ------------------------------------------------------------------------- grouping


def test_explicit_groups_label_instances_and_keep_clusters_apart() -> None:
    groups = (
        GroupSpec("web", Pattern.parse(["VI_1", "VI_WEB"]), Pattern.parse(["lb*"])),
        GroupSpec("db", Pattern.parse(["VI_1"]), Pattern.parse(["db*"]), vrid=51),
    )
    w = World(on(split_brain_grace=1, groups=groups))
    w.report("lb1", "VI_1", "MASTER")
    w.report("lb2", "VI_WEB", "BACKUP")
    w.report("db1", "VI_1", "MASTER")
    w.report("db2", "VI_1", "BACKUP")
    w.report("x1", "VI_1", "MASTER")  # no group: matched by name, a cluster of one
    assert w.run(5) == []
    w.report("lb2", "VI_WEB", "MASTER")
    assert w.run(2) == [("CLUSTER", "web", SPLIT_BRAIN)]
    view = w.detector.view(w.tracker.states, w.now)
    by_label = {g["label"]: g for g in view["groups"]}
    assert set(by_label) == {"web", "db"}
    assert by_label["web"]["condition"] == SPLIT_BRAIN
    assert by_label["web"]["masters"] == ["lb1", "lb2"]
    assert by_label["db"]["vrid"] == 51
    assert [(m["host"], m["state"]) for m in by_label["db"]["members"]] == [
        ("db1", "MASTER"), ("db2", "BACKUP")]


def test_sync_groups_count_only_when_asked() -> None:
    w = World(on(split_brain_grace=1))
    w.report("n1", "G1", "MASTER", kind="GROUP")
    w.report("n2", "G1", "MASTER", kind="GROUP")
    assert w.run(3) == []
    w2 = World(on(split_brain_grace=1, kinds=("INSTANCE", "GROUP")))
    w2.report("n1", "G1", "MASTER", kind="GROUP")
    w2.report("n2", "G1", "MASTER", kind="GROUP")
    assert w2.run(3) == [("CLUSTER", "G1", SPLIT_BRAIN)]


def test_view_shows_pending_conditions_and_peers() -> None:
    w = World(on(split_brain_grace=5))
    w.beat("n1")
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "MASTER")
    w.tick(1)
    view = w.detector.view(w.tracker.states, w.now)
    [group] = view["groups"]
    assert (group["condition"], group["pending"]) == ("OK", SPLIT_BRAIN)
    peers = {p["host"]: p for p in view["peers"]}
    assert peers["n1"]["watched"] and peers["n1"]["via"] == "heartbeat"
    assert not peers["n2"]["watched"] and peers["n2"]["via"] == "event"


# ------------------------------------------------------------------------- heartbeat wire


def test_heartbeat_decodes_strictly() -> None:
    good = heartbeat.encode("n1", 5.0, 3, "0.1.0")
    beat = heartbeat.decode(good)
    assert (beat.host, beat.interval_s, beat.spool, beat.version) == ("n1", 5.0, 3, "0.1.0")
    cases: list[tuple[dict[str, object], str]] = [
        ({"evil": 1}, "unknown field(s): 'evil'"),
        ({"host": ""}, "host must be 1..255"),
        ({"host": "a\nb"}, "host must be 1..255"),
        ({"host": 5}, "'host' has the wrong type"),
        ({"interval_s": True}, "'interval_s' has the wrong type"),
        ({"interval_s": 0}, "interval_s must be more than 0"),
        ({"spool": -1}, "spool must be a count"),
        ({"version": "x" * 65}, "version is longer"),
    ]
    for change, reason in cases:
        with pytest.raises(WireError, match=re.escape(reason)):
            heartbeat.decode({**good, **change})
    bare = {"v": 1, "op": "heartbeat"}
    with pytest.raises(WireError, match="missing the field 'host'"):
        heartbeat.decode(bare)


# ------------------------------------------------------------------------- config


def test_cluster_agent_and_metrics_config() -> None:
    text = """
[cluster]
split_brain_grace = "2s"
no_master_grace = "3s"
silent_after = "20s"
min_members = 3
kinds = ["INSTANCE", "group"]
peers = ["lb1", "lb2"]
[[cluster.group]]
label = "web"
instances = ["VI_1", "VI_WEB"]
hosts = "lb*"
[[cluster.group]]
vrid = 51
instances = "VI_DB"
[agent]
heartbeat = "1s"
timeout = "500ms"
[metrics]
listen = "[::1]:9650"
"""
    cfg = configmod.parse(text, "k.toml")
    c = cfg.cluster
    assert (c.split_brain_grace, c.no_master_grace, c.silent_after, c.min_members) == (
        2.0, 3.0, 20.0, 3)
    assert c.kinds == ("INSTANCE", "GROUP") and c.peers == ("lb1", "lb2")
    assert [g.label for g in c.groups] == ["web", "VRID 51"]
    assert c.groups[0].matches("lb2", "VI_WEB") and not c.groups[0].matches("db1", "VI_1")
    assert (cfg.agent.heartbeat, cfg.agent.timeout) == (1.0, 0.5)
    assert cfg.metrics.address == ("::1", 9650)
    default = configmod.parse("", "k.toml")
    assert default.cluster == ClusterSettings() and not default.cluster.enabled
    assert default.metrics.listen == ""
    assert configmod.parse("[cluster]\n", "k.toml").cluster == on()
    assert not configmod.parse("[cluster]\nenabled = false\n", "k.toml").cluster.enabled


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[cluster]\nsplit_brain_grace = 'soon'", "cluster.split_brain_grace", "duration"),
    ("[cluster]\nkinds = ['RS']", "cluster.kinds", "INSTANCE and/or GROUP"),
    ("[cluster]\npeers = ['lb*']", "cluster.peers", "no wildcards"),
    ("[cluster]\nsilent_after = 0", "cluster.silent_after", "more than 0"),
    ("[cluster]\nbogus = 1", "cluster.bogus", "unknown key"),
    ("[[cluster.group]]\ninstances = ['VI_1']", "cluster.group[0].label", "is required"),
    ("[[cluster.group]]\nlabel = 'a'\ninstances = []", "cluster.group[0].instances",
     "at least one"),
    ("[[cluster.group]]\nlabel = 'a'\ninstances = 'x'\n[[cluster.group]]\nlabel = 'a'\n"
     "instances = 'y'", "cluster.group[1].label", "used by another group"),
    ("[[cluster.group]]\nvrid = 300\ninstances = 'x'", "cluster.group[0].vrid", "1..255"),
    ("[agent]\nheartbeat = 0", "agent.heartbeat", "more than 0"),
    ("[metrics]\nlisten = '9650'", "metrics.listen", "HOST:PORT"),
    ("[metrics]\nlisten = 'localhost:99999'", "metrics.listen", "HOST:PORT"),
])
def test_config_errors_name_the_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        configmod.parse(text, "k.toml")
    assert err.value.key == key and reason in err.value.reason


# ------------------------------------------------------------------------- spool outboxes


@pytest.mark.parametrize(("endpoints", "missed", "where"), [
    (["tcp://a:1"], ["tcp://a:1"], ["SPOOL"]),                       # one router: as ever
    (["ipc:///r.sock"], ["ipc:///r.sock"], ["SPOOL"]),
    (["tcp://a:1", "tcp://b:2"], ["tcp://b:2"], ["to/b"]),           # b gets it later
    (["tcp://a:1", "tcp://b:2"], ["tcp://a:1", "tcp://b:2"], ["SPOOL"]),  # the agent fans out
    (["ipc:///r.sock", "tcp://b:2"], ["tcp://b:2"], ["to/b"]),
    (["ipc:///r.sock", "tcp://b:2"], ["ipc:///r.sock"], ["SPOOL"]),  # the local router replays
    (["ipc:///r.sock", "tcp://b:2"], ["ipc:///r.sock", "tcp://b:2"], ["SPOOL", "to/b"]),
    (["ipc:///x.sock", "ipc:///y.sock"], ["ipc:///x.sock"], []),     # local ones: any will do
])
def test_spool_outboxes(endpoints: list[str], missed: list[str], where: list[str]) -> None:
    names = {"SPOOL": "/s", "to/b": spool.endpoint_dir("/s", "tcp://b:2")}
    assert spool.outboxes("/s", endpoints, missed) == [names[w] for w in where]
    assert spool.endpoint_dir("/s", "tcp://b:2") == "/s/to/tcp:%2F%2Fb:2"


# ------------------------------------------------------------------------- rules


def _cluster_event() -> tuple[Event, Any]:
    w = World(on(split_brain_grace=1))
    w.report("n1", "VI_1", "MASTER")
    w.report("n2", "VI_1", "MASTER")
    w.run(2)
    [ev] = w.journal
    return ev, w.tracker.observe(ev)


@pytest.mark.parametrize(("kind", "fires"), [
    (None, False),           # written for keepalived's events: not for knotify's own
    ("!GROUP", False),
    ("INSTANCE", False),
    ("CLUSTER", True),
    ("*", True),
    (["PEER", "CLUSTER"], True),
])
def test_cluster_events_reach_only_rules_that_name_their_kind(kind: Any, fires: bool) -> None:
    ev, tr = _cluster_event()
    body = 'name = "VI_1"\n' + (f"kind = {json.dumps(kind)}\n" if kind is not None else "")
    cfg = configmod.parse(f'[[rule]]\nid = "r"\non = "every"\n{body}[[rule.action]]\n'
                          'type = "log"\n', "k.toml")
    assert cfg.rules[0].fires(ev, tr) is fires


def test_a_cluster_state_without_its_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        configmod.parse('[[rule]]\nstate = "SPLIT_BRAIN"\n[[rule.action]]\ntype = "log"\n',
                        "k.toml")
    assert err.value.key == "rule[0].state"
    assert 'add kind = ["CLUSTER", "PEER"]' in err.value.reason
    configmod.parse('[[rule]]\nkind = "CLUSTER"\nstate = ["SPLIT_BRAIN", "NO_MASTER"]\n'
                    '[[rule.action]]\ntype = "log"\n', "k.toml")
