"""One incident, one message; inhibition: a real router, a real webhook and real SMTP.

Every "nothing more came" check sends a later, unrelated event and waits for its
message first (a positive marker), then counts.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from typing import Any

import pytest
from alert_servers import HttpSink, SmtpSink, alert_items, settled
from conftest import KEnv, RouterProcess, wait_for

from knotify import zmtp
from knotify.cluster import heartbeat

pytestmark = [pytest.mark.timeout(180)]

Report = tuple[str, str, str, str, int | None]

ALERTS = """
[alerts]
group_wait = "{wait}"
retry_initial = "200ms"
retry_max = "800ms"
flap_threshold = 0
{extra}
"""

PAGE = """
[[rule]]
id = "page"
kind = "INSTANCE"
state = ["MASTER", "FAULT"]
from = "!INIT"
[[rule.action]]
type = "alert"
receivers = {receivers}
"""


_SEQ = itertools.count(1)


def send(kenv: KEnv, reports: list[Report]) -> list[str]:
    """Reports in batches of 500, as an agent sends them (one message each, taken in at
    one instant), with sequence numbers and times that go on rising from call to call;
    returns their ids."""
    ids = []
    for start in range(0, len(reports), 500):
        now = time.time_ns()
        events = [{"v": 1, "id": uuid.uuid4().hex, "host": host, "kind": kind, "name": name,
                   "state": state, "prio": prio, "seq": next(_SEQ), "ts_ns": now + i,
                   "source": "send"}
                  for i, (host, kind, name, state, prio) in enumerate(
                      reports[start:start + 500])]
        payload = json.dumps({"v": 1, "op": "events", "events": events}).encode()
        answer = json.loads(zmtp.request(f"ipc://{kenv.runtime}/knotify.sock", payload, 30))
        assert answer["ok"] and answer["rejected"] == [], answer
        ids += [str(e["id"]) for e in events]
    return ids


def titles(http: HttpSink) -> list[str]:
    return [r.json["title"] for r in http.got()]


def marker(kenv: KEnv, http: HttpSink, smtp: SmtpSink | None = None) -> None:
    """A later, unrelated failover; once its message is in, nothing else is on its way."""
    send(kenv, [("solo", "INSTANCE", "MARK", "MASTER", 100)])
    wait_for(lambda: "[solo] MARK BACKUP -> MASTER" in titles(http)
             and (smtp is None or any(m.subject == "[solo] MARK BACKUP -> MASTER"
                                      for m in smtp.mails)),
             60, what="the marker's message")


def setup(n: int, pairs: tuple[tuple[str, str], ...] = (("lb1", "lb2"),),
          prefix: str = "VI_") -> list[Report]:
    out: list[Report] = [("solo", "INSTANCE", "MARK", "BACKUP", 100)]
    for p, (a, b) in enumerate(pairs):
        for i in range(n):
            out.append((a, "INSTANCE", f"{prefix}{p}_{i}", "MASTER", 100))
            out.append((b, "INSTANCE", f"{prefix}{p}_{i}", "BACKUP", 50))
    return out


def failover(n: int, pairs: tuple[tuple[str, str], ...] = (("lb1", "lb2"),),
             prefix: str = "VI_") -> list[Report]:
    out: list[Report] = []
    for p, (a, b) in enumerate(pairs):
        for i in range(n):
            out.append((a, "INSTANCE", f"{prefix}{p}_{i}", "FAULT", 0))
            out.append((b, "INSTANCE", f"{prefix}{p}_{i}", "MASTER", 150))
    return out


def test_one_instance_failover_is_one_message_naming_both_hosts(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    kenv.write_config(ALERTS.format(wait="2s", extra="") + f'[receivers.chat]\nurls = '
                      f'["{http.url()}"]\n' + PAGE.format(receivers='["chat"]'))
    router.start()
    send(kenv, setup(1))
    send(kenv, failover(1))
    wait_for(lambda: http.got(), 30, what="the failover's message")
    marker(kenv, http)
    got = [t for t in titles(http) if "MARK" not in t]
    assert got == ["[lb1, lb2] VI_0_0: lb1 MASTER -> FAULT, lb2 BACKUP -> MASTER"]
    text = http.got()[0].json["message"]
    assert "lb1 INSTANCE VI_0_0: MASTER -> FAULT" in text
    assert "lb2 INSTANCE VI_0_0: BACKUP -> MASTER" in text


def test_explicit_group_by_keeps_one_message_per_host(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    kenv.write_config(ALERTS.format(wait="2s", extra='group_by = ["host"]')
                      + f'[receivers.chat]\nurls = ["{http.url()}"]\n'
                      + PAGE.format(receivers='["chat"]'))
    router.start()
    send(kenv, setup(1))
    send(kenv, failover(1))
    wait_for(lambda: len(http.got()) >= 2, 30, what="the failover's messages")
    marker(kenv, http)
    assert sorted(t for t in titles(http) if "MARK" not in t) == [
        "[lb1] VI_0_0 MASTER -> FAULT", "[lb2] VI_0_0 BACKUP -> MASTER"]
    bodies = sorted(r.json["message"] for r in http.got() if "MARK" not in r.json["title"])
    assert " lb1 INSTANCE VI_0_0: MASTER -> FAULT (" in bodies[0].splitlines()[0]
    assert " lb2 INSTANCE VI_0_0: BACKUP -> MASTER (" in bodies[1].splitlines()[0]


def test_mass_failover_is_one_message_per_receiver_with_a_folded_list(
    kenv: KEnv, router: RouterProcess, http: HttpSink, smtp: SmtpSink
) -> None:
    kenv.write_config(ALERTS.format(wait="3s", extra="")
                      + f'[receivers.chat]\nurls = ["{http.url()}"]\n'
                      + f'[receivers.mail]\nurls = ["{smtp.url()}"]\n'
                      + PAGE.format(receivers='["chat", "mail"]'))
    router.start()
    send(kenv, setup(300))
    send(kenv, failover(300))
    wait_for(lambda: http.got() and smtp.mails, 60, what="the failover's messages")
    marker(kenv, http, smtp)
    chats = [r.json for r in http.got() if "MARK" not in r.json["title"]]
    mails = [m for m in smtp.mails if "MARK" not in m.subject]
    assert len(chats) == 1 and len(mails) == 1, ([c["title"] for c in chats],
                                                 [m.subject for m in mails])
    title = "[lb1, lb2] 300 instances: lb1 MASTER -> FAULT (300), lb2 BACKUP -> MASTER (300)"
    assert chats[0]["title"] == title and mails[0].subject == title
    for text in (chats[0]["message"], mails[0].body):
        lines = text.splitlines()
        assert sum(" INSTANCE VI_0_" in ln for ln in lines) == 24  # 12 instances, 2 each
        assert "... and 288 more instances (576 changes)" in lines
        assert "knotify events: " in text and " ... and 588 more" in text
    # every event of the failover went into that one message, per receiver
    items = [i for i in alert_items(kenv.history()) if i["event"]["name"].startswith("VI_")]
    assert len(items) == 1200
    assert len({(i["receiver"], i["message"]["id"]) for i in items}) == 2


def test_unrelated_host_pairs_failing_at_once_are_separate_messages(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    kenv.write_config(ALERTS.format(wait="2s", extra="")
                      + f'[receivers.chat]\nurls = ["{http.url()}"]\n'
                      + PAGE.format(receivers='["chat"]'))
    router.start()
    pairs = (("lb1", "lb2"), ("db1", "db2"))
    send(kenv, setup(3, pairs))
    send(kenv, failover(3, pairs))
    wait_for(lambda: len(http.got()) >= 2, 30, what="the two incidents' messages")
    marker(kenv, http)
    assert sorted(t for t in titles(http) if "MARK" not in t) == [
        "[db1, db2] 3 instances: db1 MASTER -> FAULT (3), db2 BACKUP -> MASTER (3)",
        "[lb1, lb2] 3 instances: lb1 MASTER -> FAULT (3), lb2 BACKUP -> MASTER (3)"]


def test_cluster_conditions_raised_together_are_one_page(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    kenv.write_config('[cluster]\nno_master_grace = "1s"\n'
                      + ALERTS.format(wait="2s", extra="")
                      + f'[receivers.chat]\nurls = ["{http.url()}"]\n' + """
[[rule]]
id = "cluster"
kind = "CLUSTER"
state = "NO_MASTER"
[[rule.action]]
type = "alert"
receivers = ["chat"]

[[rule]]
id = "marker"
name = "MARK"
state = "MASTER"
[[rule.action]]
type = "alert"
receivers = ["chat"]
""")
    router.start()
    send(kenv, setup(300))
    # lb1 fails and lb2 stays BACKUP: 300 clusters without a master
    send(kenv, [("lb1", "INSTANCE", f"VI_0_{i}", "FAULT", 0) for i in range(300)])
    wait_for(lambda: http.got(), 60, what="the NO_MASTER page")
    marker(kenv, http)
    pages = [r.json for r in http.got() if "MARK" not in r.json["title"]]
    assert len(pages) == 1, [p["title"] for p in pages]
    assert pages[0]["title"].startswith("[lb1, lb2] 300 clusters: ")
    assert "NO_MASTER (300)" in pages[0]["title"]
    lines = pages[0]["message"].splitlines()
    assert sum(" CLUSTER VI_0_" in ln for ln in lines) == 12
    assert "... and 288 more clusters" in lines
    raised = [e for e in kenv.history(kind="CLUSTER") if e["reported"] == "NO_MASTER"]
    assert len(raised) == 300


# -- inhibition ------------------------------------------------------------------------------


def beat(kenv: KEnv, host: str) -> None:
    payload = json.dumps(heartbeat.encode(host, 0.3, 0, "test")).encode()
    answer = json.loads(zmtp.request(f"ipc://{kenv.runtime}/knotify.sock", payload, 10))
    assert answer["ok"], answer


def peer_events(kenv: KEnv, state: str) -> list[dict[str, Any]]:
    return [e for e in kenv.history(kind="PEER") if e["reported"] == state]


def test_a_silent_peer_mutes_its_instance_alerts_until_it_is_back(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    kenv.write_config('[cluster]\nsilent_after = "2s"\npeers = ["lb1"]\n'
                      + ALERTS.format(wait="300ms", extra='repeat_interval = "1s"\n' + """
[[alerts.inhibit]]
source_matchers = ["kind=PEER", "state=PEER_SILENT"]
target_matchers = ["kind=INSTANCE,GROUP"]
equal = ["host"]
""") + f'[receivers.chat]\nurls = ["{http.url()}"]\n' + PAGE.format(receivers='["chat"]'))
    checked = kenv.cli("check-config").stdout
    assert ("inhibit 1: kind=PEER state=PEER_SILENT mutes kind=INSTANCE,GROUP with the "
            "same host") in checked
    router.start()
    # lb1 FAULT: paged, then "still FAULT" every second while it lasts
    send(kenv, [("lb1", "INSTANCE", "VI_1", "MASTER", 100),
                ("lb1", "INSTANCE", "VI_1", "FAULT", 0)])
    wait_for(lambda: peer_events(kenv, "PEER_SILENT"), 30, what="lb1 to fall silent")
    [silent] = peer_events(kenv, "PEER_SILENT")

    def inhibited() -> list[dict[str, Any]]:
        return [i for i in alert_items(kenv.history()) if i["status"] == "inhibited"]

    wait_for(lambda: len(inhibited()) >= 2, 30, what="reminders to be inhibited")
    for item in inhibited():
        assert item["alert"] == "repeat" and item["event"]["host"] == "lb1"
        assert f"event {silent['id']}" in str(item["detail"]), item["detail"]
        assert "inhibited by PEER lb1 PEER_SILENT" in str(item["detail"])
    assert "inhibited by PEER lb1 PEER_SILENT" in kenv.cli("history").stdout
    # lb1 heartbeats again: PEER_BACK, and the reminders flow again
    stop = threading.Event()

    def keep_beating() -> None:
        while not stop.is_set():
            beat(kenv, "lb1")
            stop.wait(0.3)

    beating = threading.Thread(target=keep_beating, daemon=True)
    beating.start()
    try:
        wait_for(lambda: peer_events(kenv, "PEER_BACK"), 30, what="PEER_BACK")
        [back] = peer_events(kenv, "PEER_BACK")
        back_ns = int(str(back["recv_ns"]))

        def flowing() -> list[dict[str, object]]:
            return [i for i in alert_items(kenv.history()) if i["alert"] == "repeat"
                    and int(str(i["created_ns"])) > back_ns and i["status"] == "composed"
                    and i["message"] and i["message"]["status"] == "sent"]

        wait_for(flowing, 30, what="a reminder delivered after PEER_BACK")
        reminders = [r for r in http.got() if "still FAULT" in r.json["title"]]
        assert reminders and reminders[-1].t_start > back_ns / 1e9
    finally:
        stop.set()
        beating.join(5)


def test_a_split_brain_mutes_master_and_backup_alerts_of_its_cluster(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    kenv.write_config('[cluster]\nsplit_brain_grace = "1s"\n'
                      + ALERTS.format(wait="300ms", extra="""
[[alerts.inhibit]]
source_matchers = ["kind=CLUSTER", "state=SPLIT_BRAIN"]
target_matchers = ["kind=INSTANCE", "state=MASTER,BACKUP"]
equal = ["cluster"]
""") + f'[receivers.chat]\nurls = ["{http.url()}"]\n' + """
[[rule]]
id = "page"
kind = "INSTANCE"
state = ["MASTER", "BACKUP"]
from = "!INIT"
[[rule.action]]
type = "alert"
receivers = ["chat"]
""")
    router.start()
    send(kenv, [("lb1", "INSTANCE", "VI_1", "MASTER", 100),
                ("lb2", "INSTANCE", "VI_1", "MASTER", 100),
                ("lb3", "INSTANCE", "VI_1", "BACKUP", 50),
                ("lb1", "INSTANCE", "VI_2", "BACKUP", 100)])
    wait_for(lambda: [e for e in kenv.history(kind="CLUSTER") if e["reported"] == "SPLIT_BRAIN"],
             30, what="SPLIT_BRAIN")
    [split] = [e for e in kenv.history(kind="CLUSTER") if e["reported"] == "SPLIT_BRAIN"]
    # lb3 takes VI_1 too while the split lasts: muted; VI_2 is another cluster: paged
    [lb3_master, _] = send(kenv, [("lb3", "INSTANCE", "VI_1", "MASTER", 50),
                                      ("lb1", "INSTANCE", "VI_2", "MASTER", 100)])
    wait_for(lambda: "[lb1] VI_2 BACKUP -> MASTER" in titles(http), 30, what="VI_2's page")
    wait_for(lambda: settled(kenv.history()), 30, what="the alerts to settle")
    [muted] = [i for i in alert_items(kenv.history()) if i["event"]["id"] == lb3_master]
    assert muted["status"] == "inhibited"
    assert f"event {split['id']}" in muted["detail"] and "SPLIT_BRAIN" in muted["detail"]
    assert not [t for t in titles(http) if "VI_1" in t]
    # the split ends: only lb1 is MASTER
    send(kenv, [("lb2", "INSTANCE", "VI_1", "BACKUP", 100),
                ("lb3", "INSTANCE", "VI_1", "BACKUP", 50)])
    wait_for(lambda: [e for e in kenv.history(kind="CLUSTER")
                      if e["reported"] == "SPLIT_BRAIN_RESOLVED"], 30, what="the resolution")
    # a clean failover now (both reports at once, no split in between): paged
    after = send(kenv, [("lb1", "INSTANCE", "VI_1", "BACKUP", 100),
                            ("lb2", "INSTANCE", "VI_1", "MASTER", 100)])
    wait_for(lambda: any("VI_1: lb1 MASTER -> BACKUP, lb2 BACKUP -> MASTER" in t
                         for t in titles(http)), 30, what="the failover's page")
    items = [i for i in alert_items(kenv.history()) if i["event"]["id"] in after]
    assert [i["status"] for i in items] == ["composed", "composed"]
