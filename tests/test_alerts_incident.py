"""Grouping by incident and inhibition, alone: plain values in and out."""

from __future__ import annotations

from pathlib import Path

import pytest

from knotify.alerts import inhibit, render
from knotify.alerts.incident import CLUSTER_VIEW, HOSTS_FIELD, ClusterIndex
from knotify.cluster.settings import ClusterSettings, GroupSpec
from knotify.event import Key
from knotify.rules import Pattern
from knotify.tracker import KeyState


def states(*entries: tuple[str, str, str, str]) -> dict[Key, KeyState]:
    return {(host, kind, name, ""): KeyState(state, None, 0, "e", 1, 1, 0)
            for host, kind, name, state in entries}


def test_an_instance_incident_is_the_hosts_of_its_cluster() -> None:
    index = ClusterIndex(states(("lb1", "INSTANCE", "VI_1", "FAULT"),
                                ("lb2", "INSTANCE", "VI_1", "MASTER"),
                                ("lb3", "INSTANCE", "WEB", "MASTER"),
                                ("lb4", "INSTANCE", "WEB", "BACKUP"),
                                ("lb1", "GROUP", "G1", "FAULT"),
                                ("lb2", "GROUP", "G1", "MASTER"),
                                ("solo", "INSTANCE", "VI_9", "MASTER")), ClusterSettings())
    # whichever host reported it: one key for both sides of the failover
    assert index.incident("lb1", "INSTANCE", "VI_1") == ("lb1,lb2", "lb1,lb2")
    assert index.incident("lb2", "INSTANCE", "VI_1") == ("lb1,lb2", "lb1,lb2")
    assert index.incident("lb2", "GROUP", "G1") == ("lb1,lb2", "lb1,lb2")
    # another pair is another incident; an instance no other host serves is its host's
    assert index.incident("lb4", "INSTANCE", "WEB") == ("lb3,lb4", "lb3,lb4")
    assert index.incident("solo", "INSTANCE", "VI_9") == ("solo", "solo")
    # what the tracker does not know yet counts its own host
    assert index.incident("lb5", "INSTANCE", "NEW") == ("lb5", "lb5")
    # LVS and the like: their host
    assert index.incident("lb1", "RS", "10.0.0.1:80") == ("lb1", "lb1")


def test_cluster_view_events_share_one_incident_and_name_the_cluster_hosts() -> None:
    index = ClusterIndex(states(("lb1", "INSTANCE", "VI_1", "MASTER"),
                                ("lb2", "INSTANCE", "VI_1", "MASTER")), ClusterSettings())
    assert index.incident("router", "CLUSTER", "VI_1") == (CLUSTER_VIEW, "lb1,lb2")
    assert index.incident("router", "CLUSTER", "GONE") == (CLUSTER_VIEW, "router")
    assert index.incident("lb1", "PEER", "lb1") == (CLUSTER_VIEW, "lb1")


def test_cluster_groups_label_instances_and_deleted_ones_do_not_count() -> None:
    web = GroupSpec(label="web", instances=Pattern.parse(["VI_WEB", "VI_1"]),
                    hosts=Pattern.parse(["lb*"]))
    settings = ClusterSettings(by_name=False, groups=(web,))
    index = ClusterIndex(states(("lb1", "INSTANCE", "VI_1", "MASTER"),
                                ("lb2", "INSTANCE", "VI_WEB", "BACKUP"),
                                ("lb3", "INSTANCE", "VI_1", "DELETED"),
                                ("db1", "INSTANCE", "VI_1", "MASTER"),
                                ("db2", "INSTANCE", "VI_1", "BACKUP")), settings)
    assert index.incident("lb2", "INSTANCE", "VI_WEB") == ("lb1,lb2", "lb1,lb2")
    assert index.cluster_of("lb2", "INSTANCE", "VI_WEB") == "web"
    # by_name off and no group: no cluster, the host alone
    assert index.incident("db1", "INSTANCE", "VI_1") == ("db1", "db1")
    assert index.cluster_of("db1", "INSTANCE", "VI_1") == ""
    assert index.cluster_of("r", "CLUSTER", "web") == "web"


#: The alert line's date and zone (``when`` in the default line).
WHEN = "2026-12-03T12:00:01+00:00"


def item(host: str, name: str, prev: str, state: str, ident: str, hosts: str = "lb1,lb2",
         kind: str = "INSTANCE") -> render.Item:
    return render.Item("firing", {
        "id": ident, "host": host, "kind": kind, "name": name, "subject": name,
        "state": state, "reported": state, "prev_state": prev, "prio": "", "class": "transition",
        "duration": "", "time": "12:00:01", "when": WHEN, "rule": "r", "incident": hosts,
        HOSTS_FIELD: hosts})


def test_one_failover_names_both_hosts_and_both_changes() -> None:
    out = render.compose([item("lb1", "VI_1", "MASTER", "FAULT", "e1"),
                          item("lb2", "VI_1", "BACKUP", "MASTER", "e2")], render.Templates())
    assert out.title == "[lb1, lb2] VI_1: lb1 MASTER -> FAULT, lb2 BACKUP -> MASTER"
    assert out.body.splitlines() == [
        f"{WHEN} lb1 INSTANCE VI_1: MASTER -> FAULT", f"{WHEN} lb2 INSTANCE VI_1: BACKUP -> "
        "MASTER", "", "knotify events: e1, e2"]
    assert out.notify_type == "failure"


def test_one_side_of_a_failover_still_names_the_other_host() -> None:
    out = render.compose([item("lb2", "VI_1", "BACKUP", "MASTER", "e2")], render.Templates())
    assert out.title == "[lb1, lb2] VI_1: lb2 BACKUP -> MASTER"


def test_a_mass_failover_is_summed_up_and_its_list_folded_with_the_count() -> None:
    items = []
    for i in range(300):
        items.append(item("lb1", f"VI_{i}", "MASTER", "FAULT", f"a{i}"))
        items.append(item("lb2", f"VI_{i}", "BACKUP", "MASTER", f"b{i}"))
    out = render.compose(items, render.Templates(), fold=12)
    assert out.title == ("[lb1, lb2] 300 instances: lb1 MASTER -> FAULT (300), "
                         "lb2 BACKUP -> MASTER (300)")
    body = out.body.splitlines()
    assert body[:2] == [f"{WHEN} lb1 INSTANCE VI_0: MASTER -> FAULT",
                        f"{WHEN} lb2 INSTANCE VI_0: BACKUP -> MASTER"]
    assert body[23] == f"{WHEN} lb2 INSTANCE VI_11: BACKUP -> MASTER"
    assert body[24] == "... and 288 more instances (576 changes)"
    assert body[-1] == ("knotify events: " + ", ".join(["a0", "b0", "a1", "b1", "a2", "b2",
                                                         "a3", "b3", "a4", "b4", "a5", "b5"])
                        + " ... and 588 more")
    assert "VI_12:" not in out.body
    # fold 0: every line
    full = render.compose(items, render.Templates(), fold=0)
    assert len([ln for ln in full.body.splitlines() if " INSTANCE " in ln]) == 600
    assert "more" not in full.body


def test_cluster_conditions_raised_together_read_as_one_page() -> None:
    # A first condition comes from none ("OK"): the page names only the condition.
    items = [item("router", f"VI_{i}", "OK", "NO_MASTER", f"c{i}", kind="CLUSTER")
             for i in range(300)]
    out = render.compose(items, render.Templates(), fold=12)
    assert out.title == "[lb1, lb2] 300 clusters: NO_MASTER (300)"
    assert "... and 288 more clusters" in out.body
    assert out.body.count(" CLUSTER ") == 12


def test_without_incident_fields_messages_keep_todays_shape() -> None:
    plain = [render.Item(i.alert, {k: v for k, v in i.fields.items()
                                   if k not in ("incident", HOSTS_FIELD)})
             for i in (item("lb1", f"VI_{n}", "BACKUP", "MASTER", f"e{n}") for n in range(20))]
    out = render.compose(plain, render.Templates(), fold=12)
    assert out.title == "[lb1] VI_0, VI_1, VI_2, VI_3, VI_4, VI_5 +14 more -> MASTER"
    assert len(out.body.splitlines()) == 22  # 20 lines, blank, footer: not folded


# -- inhibition -------------------------------------------------------------------------------

PEER_RULE = inhibit.InhibitRule(
    (inhibit.parse("kind=PEER", inhibit.SOURCE_FIELDS),
     inhibit.parse("state=PEER_SILENT", inhibit.SOURCE_FIELDS)),
    (inhibit.parse("kind=INSTANCE,GROUP", inhibit.TARGET_FIELDS),), ("host",))
SPLIT_RULE = inhibit.InhibitRule(
    (inhibit.parse("kind=CLUSTER", inhibit.SOURCE_FIELDS),
     inhibit.parse("state=SPLIT_BRAIN", inhibit.SOURCE_FIELDS)),
    (inhibit.parse("state=MASTER,BACKUP", inhibit.TARGET_FIELDS),), ("cluster",))


def target(host: str, name: str, state: str, kind: str = "INSTANCE") -> dict[str, str]:
    return {"id": f"t-{host}-{name}", "host": host, "kind": kind, "name": name, "vs": "",
            "subject": name, "state": state, "reported": state}


def active(*entries: tuple[str, str, str, str]) -> inhibit.Active:
    st = states(*entries)
    for n, ks in enumerate(st.values()):
        ks.event_id = f"src{n}"
    return inhibit.Active((PEER_RULE, SPLIT_RULE), st, ClusterIndex(st, ClusterSettings()))


def test_a_silent_peer_mutes_its_own_instance_alerts_only() -> None:
    on = active(("lb1", "PEER", "lb1", "PEER_SILENT"), ("lb1", "INSTANCE", "VI_1", "FAULT"),
                ("lb2", "INSTANCE", "VI_1", "MASTER"))
    muted = on.match(target("lb1", "VI_1", "FAULT"))
    assert muted is not None and (muted.rule, muted.event_id, muted.state) == (
        1, "src0", "PEER_SILENT")
    assert "inhibited by PEER lb1 PEER_SILENT since " in muted.describe()
    assert "(event src0, inhibit rule 1)" in muted.describe()
    assert on.match(target("lb2", "VI_1", "MASTER")) is None  # another host
    assert on.match(target("lb1", "10.0.0.1:80", "DOWN", kind="RS")) is None  # not a target
    # the source never mutes itself
    assert on.match({**target("lb1", "lb1", "PEER_SILENT", kind="PEER"), "id": "x"}) is None


def test_the_source_ending_ends_the_muting() -> None:
    on = active(("lb1", "PEER", "lb1", "PEER_BACK"), ("lb1", "INSTANCE", "VI_1", "FAULT"))
    assert on.match(target("lb1", "VI_1", "FAULT")) is None


def test_a_split_brain_mutes_master_and_backup_of_its_cluster() -> None:
    on = active(("central", "CLUSTER", "VI_1", "SPLIT_BRAIN"),
                ("lb1", "INSTANCE", "VI_1", "MASTER"), ("lb2", "INSTANCE", "VI_1", "MASTER"),
                ("lb1", "INSTANCE", "VI_2", "MASTER"), ("central", "CLUSTER", "VI_3", "OK"))
    muted = on.match(target("lb2", "VI_1", "BACKUP"))
    assert muted is not None and muted.rule == 2 and muted.key[1:3] == ("CLUSTER", "VI_1")
    assert "inhibited by CLUSTER VI_1 SPLIT_BRAIN" in muted.describe()
    assert on.match(target("lb1", "VI_1", "FAULT")) is None      # not MASTER/BACKUP
    assert on.match(target("lb1", "VI_2", "MASTER")) is None     # another cluster
    assert on.match(target("lb1", "VI_3", "MASTER")) is None     # its condition is over


def test_inhibit_rules_load_and_errors_name_the_key(tmp_path: Path) -> None:
    from knotify import config as configmod
    from knotify.errors import ConfigError

    path = tmp_path / "k.toml"
    good = """
[[alerts.inhibit]]
source_matchers = ["kind=CLUSTER", "state=SPLIT_BRAIN"]
target_matchers = ["kind=INSTANCE", "state=MASTER,BACKUP"]
equal = ["cluster"]

[[alerts.inhibit]]
source_matchers = "state=PEER_SILENT"
equal = "host"
"""
    config = configmod.parse(good, str(path))
    first, second = config.alerts.inhibit
    assert first.describe() == ("kind=CLUSTER state=SPLIT_BRAIN mutes kind=INSTANCE "
                                "state=MASTER,BACKUP with the same cluster")
    assert second.describe() == "state=PEER_SILENT mutes every alert with the same host"
    assert config.alerts.group_by == ("incident",) and config.alerts.fold_after == 12
    for body, key, reason in [
        ('target_matchers = ["kind=INSTANCE"]', "alerts.inhibit[0].source_matchers",
         "needs at least one matcher"),
        ('source_matchers = ["rule=x"]', "alerts.inhibit[0].source_matchers",
         "'rule' cannot be used here"),
        ('source_matchers = ["colour=red"]', "alerts.inhibit[0].source_matchers",
         "unknown field 'colour'"),
        ('source_matchers = ["state=PEER_SILENT"]\ntarget_matchers = ["host"]',
         "alerts.inhibit[0].target_matchers", "must be FIELD=VALUE"),
        ('source_matchers = ["state=PEER_SILENT"]\nequal = ["state"]',
         "alerts.inhibit[0].equal", "unknown field 'state'"),
        ('source_matchers = ["state=PEER_SILENT"]\nsources = []',
         "alerts.inhibit[0].sources", "unknown key"),
    ]:
        with pytest.raises(ConfigError) as info:
            configmod.parse(f"[[alerts.inhibit]]\n{body}\n", str(path))
        assert key in str(info.value) and reason in str(info.value), (body, str(info.value))
    with pytest.raises(ConfigError) as info:
        configmod.parse('[alerts]\ngroup_by = ["incidents"]\n', str(path))
    assert "alerts.group_by" in str(info.value) and "incident, host" in str(info.value)
