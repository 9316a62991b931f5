"""The Alertmanager receiver against a real Prometheus Alertmanager (and real routers).

Alertmanager is Debian's ``prometheus-alertmanager``, started per test on 127.0.0.1
(tests/alertmanager_server.py); what it holds is read from its API v2. Where a test
needs an answer Alertmanager never gives (429 Retry-After, an auth check), a local
HTTP server plays that part. Nothing asserts a duration except that a Retry-After
was honoured (a lower bound the receiver itself must keep).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alert_servers import FAST_ALERTS, PASSWORD, TOKEN, HttpSink
from alertmanager_server import Alertmanager, binary
from conftest import KEnv, RouterProcess, check_router_logs, need, wait_for

from knotify import zmtp
from knotify.alerts.alertmanager import rfc3339


@pytest.fixture
def am(kenv: KEnv) -> Iterator[Alertmanager]:
    need(binary() is not None, "prometheus-alertmanager is not installed "
         "(apt-get install prometheus-alertmanager; scripts/test does it as root)")
    server = Alertmanager(kenv.root / "am")
    try:
        yield server.start()
    finally:
        server.stop()


RULE = """
[[rule]]
id = "page"
kind = ["INSTANCE", "GROUP"]
state = ["FAULT"]
[[rule.action]]
type = "alert"
receivers = ["am"]
"""


def write(kenv: KEnv, urls: list[str], extra: str = "", rule: str = RULE) -> None:
    kenv.write_config(FAST_ALERTS + f"""
[receivers.am]
type = "alertmanager"
urls = {json.dumps(urls)}
{extra}
""" + rule)


def events(*reports: tuple[str, str, str, str, int | None]) -> list[dict[str, Any]]:
    now = time.time_ns()
    return [{"v": 1, "id": uuid.uuid4().hex, "host": host, "kind": kind, "name": name,
             "state": state, "prio": prio, "seq": now + i, "ts_ns": now + i, "source": "send"}
            for i, (host, kind, name, state, prio) in enumerate(reports)]


def route(kenvs: list[KEnv], batch: list[dict[str, Any]]) -> None:
    """The same events (same ids) to every router, as hooks that send to both would."""
    payload = json.dumps({"v": 1, "op": "events", "events": batch}).encode()
    for k in kenvs:
        answer = json.loads(zmtp.request(f"ipc://{k.runtime}/knotify.sock", payload, 10))
        assert answer["ok"] and answer["rejected"] == [], answer


def mine(am: Alertmanager, **labels: str) -> list[dict[str, Any]]:
    return [a for a in am.alerts() if all(a["labels"].get(k) == v for k, v in labels.items())]


def journal_rows(kenv: KEnv, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{kenv.journal}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def end_page_sent(kenv: KEnv, event_id: str) -> bool:
    """The message of event ``event_id``'s own page is sent, with every message before
    it (one receiver's posts go out in order)."""
    rows = journal_rows(kenv, "SELECT event_ids, status FROM alert_messages ORDER BY rowid")
    pages = [i for i, (ids, _) in enumerate(rows) if event_id in json.loads(ids)]
    return bool(pages) and all(status == "sent" for _, status in rows[:pages[-1] + 1])


def test_an_alert_reaches_alertmanager_with_its_labels_and_is_resolved_after_recovery(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    write(kenv, [am.url], 'labels = { env = "test", team = "lb" }')
    router.start()
    [master] = events(("node1", "INSTANCE", "VI_1", "MASTER", 100))
    route([kenv], [master])
    [fault] = events(("node1", "INSTANCE", "VI_1", "FAULT", 0))
    route([kenv], [fault])
    [alert] = wait_for(lambda: mine(am, alertname="KnotifyVRRP"), 60,
                       what="the alert in Alertmanager")
    assert alert["labels"] == {"alertname": "KnotifyVRRP", "kind": "INSTANCE",
                               "host": "node1", "instance": "VI_1", "state": "FAULT",
                               "severity": "critical", "env": "test", "team": "lb"}
    assert alert["status"]["state"] == "active"
    assert fault["id"] in alert["annotations"]["event_ids"]
    assert "VI_1" in alert["annotations"]["summary"]
    assert "MASTER -> FAULT" in alert["annotations"]["description"]
    assert alert["annotations"]["rule"] == "page"
    # startsAt is the event's own time (Alertmanager shows milliseconds).
    assert alert["startsAt"][:23] == rfc3339(fault["ts_ns"])[:23]
    # Posted valid for 4 re-post intervals (1m by default): an end seen within seconds
    # below is knotify's resolution, not Alertmanager timing the alert out.
    assert dt.datetime.fromisoformat(alert["endsAt"]).timestamp() > time.time() + 120
    [backup] = events(("node1", "INSTANCE", "VI_1", "BACKUP", 100))
    route([kenv], [backup])  # no rule pages BACKUP: the tracker says FAULT is over
    wait_for(lambda: not mine(am, alertname="KnotifyVRRP"), 60,
             what="Alertmanager to show the alert resolved")
    # The rule also pages FAULT's end (send_resolved), group_wait later: once that page
    # is sent too, Alertmanager still holds nothing (it posts FAULT resolved, never a
    # BACKUP alert, whether the tick saw BACKUP before it was composed or after).
    wait_for(lambda: end_page_sent(kenv, backup["id"]), 60, what="the page of the end")
    assert mine(am, alertname="KnotifyVRRP") == []
    sent = journal_rows(kenv, "SELECT alert, status FROM alert_messages ORDER BY rowid")
    # The tick's own resolution is there when the tick saw BACKUP first (the usual order).
    assert sent in ([("firing", "sent"), ("resolved", "sent"), ("firing", "sent")],
                    [("firing", "sent"), ("firing", "sent")]), sent
    records = [r for r in router.records() if r.get("event") == "alertmanager.resolved"]
    assert [r["alerts"] for r in records] == (
        [["VI_1 FAULT on node1"]] if ("resolved", "sent") in sent else [])


def test_two_routers_posting_the_same_incident_show_as_one_alert(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    other = KEnv(Path(tempfile.mkdtemp(prefix="kn-", dir="/tmp")))
    second = RouterProcess(other)
    try:
        for k in (kenv, other):
            write(k, [am.url])
        router.start()
        second.start()
        route([kenv, other], events(("lb1", "INSTANCE", "VI_1", "MASTER", 100),
                                    ("lb2", "INSTANCE", "VI_1", "BACKUP", 90)))
        route([kenv, other], events(("lb1", "INSTANCE", "VI_1", "FAULT", 0),
                                    ("lb2", "INSTANCE", "VI_1", "MASTER", 90)))
        # Both routers posted it: each journal has its firing message sent.
        for k in (kenv, other):
            def firing_sent(k: KEnv = k) -> bool:
                return ("firing", "sent") in journal_rows(
                    k, "SELECT alert, status FROM alert_messages")

            wait_for(firing_sent, 60,
                what="each router to post the alert")
        found = mine(am, alertname="KnotifyVRRP")
        assert len(found) == 1, found
        assert found[0]["labels"]["host"] == "lb1" and found[0]["labels"]["state"] == "FAULT"
        [backup] = events(("lb1", "INSTANCE", "VI_1", "BACKUP", 100))
        route([kenv, other], [backup])
        # Each router's tick resolves FAULT, and each posts the page of its end
        # (send_resolved) group_wait later, in either order: once both pages are sent,
        # Alertmanager holds nothing (no BACKUP alert fired by a page of FAULT's end).
        for k in (kenv, other):
            def page_sent(k: KEnv = k) -> bool:
                return end_page_sent(k, backup["id"])

            wait_for(page_sent, 60, what="each router to post the page of the end")
        assert mine(am, alertname="KnotifyVRRP") == []
    finally:
        check_router_logs([second])
        shutil.rmtree(other.root, ignore_errors=True)


def test_an_unreachable_alertmanager_is_retried_through_the_outbox_until_it_is_up(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    late = Alertmanager(kenv.root / "am2")  # the second of its HA pair: not up yet
    write(kenv, [am.url, late.url])
    router.start()
    try:
        route([kenv], events(("node1", "INSTANCE", "VI_1", "FAULT", 0)))
        wait_for(lambda: mine(am, instance="VI_1"), 60, what="the alert on the first")
        failed = wait_for(lambda: journal_rows(
            kenv, "SELECT urls FROM alert_attempts WHERE status = 'failed'"), 60,
            what="a failed attempt to the second Alertmanager")
        urls = json.loads(failed[0][0])
        [down] = [u for u in urls if not u["ok"]]
        assert down["url"] == late.url and "cannot connect" in down["error"]
        late.start()
        [alert] = wait_for(lambda: mine(late, instance="VI_1"), 60,
                           what="the alert on the second, once it is up")
        assert alert["labels"]["state"] == "FAULT"
        # Alertmanager may show it before the router has journaled the outcome.
        firing = wait_for(lambda: (got := journal_rows(
            kenv, "SELECT rowid, status, attempts FROM alert_messages WHERE alert = 'firing'"))
            and got[0][1] == "sent" and got, 30, what="the message journaled as sent")
        assert firing[0][2] >= 2
        tried = journal_rows(kenv, "SELECT status, urls FROM alert_attempts WHERE message = ? "
                             "ORDER BY rowid", firing[0][0])
        first_urls = json.loads(tried[0][1])
        assert [u["ok"] for u in first_urls] == [True, False]
        assert tried[-1][0] == "ok"
        assert [u["url"] for u in json.loads(tried[-1][1])] == [late.url]
    finally:
        late.stop()


def test_429_retry_after_holds_the_receiver_until_then(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    # A proxy in front of Alertmanager that says "slow down" once (Alertmanager never does).
    http.behaviour["/api/v2/alerts"] = "429:3:1"
    write(kenv, [f"http://127.0.0.1:{http.port}"])
    router.start()
    route([kenv], events(("node1", "INSTANCE", "VI_1", "FAULT", 0)))
    wait_for(lambda: http.got("/api/v2/alerts"), 60, what="the post after the 429")
    [slow] = http.refused
    [ok] = http.got("/api/v2/alerts")
    assert ok.t_start - slow.t_end >= 3.0  # retry_initial is 200 ms here
    assert ok.json[0]["labels"]["instance"] == "VI_1"
    [record] = [r for r in router.records() if r.get("event") == "alert.slow_down"]
    assert record["retry_after"] == 3.0 and record["receiver"] == "am"
    [(urls,)] = journal_rows(kenv, "SELECT urls FROM alert_attempts WHERE status = 'failed'")
    assert "HTTP 429" in json.loads(urls)[0]["error"]


def test_basic_auth_and_bearer_token_are_sent_and_never_shown(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/fail"] = "fail"
    write(kenv, [f"http://knotify:{PASSWORD}@127.0.0.1:{http.port}",
                 f"http://127.0.0.1:{http.port}/fail"], f'bearer_token = "{TOKEN}"')
    check = kenv.cli("check-config").stdout
    assert f"http://knotify:****@127.0.0.1:{http.port}" in check
    router.start()
    route([kenv], events(("node1", "INSTANCE", "VI_1", "FAULT", 0)))
    [got] = wait_for(lambda: http.got("/api/v2/alerts"), 60, what="the post")
    assert got.headers["Authorization"] == f"Bearer {TOKEN}"
    wait_for(lambda: journal_rows(kenv, "SELECT 1 FROM alert_attempts WHERE status = "
                                  "'failed'"), 60, what="a failed attempt to /fail")
    history = kenv.cli("history", "--json").stdout
    every = router.log_text() + history + check + json.dumps(
        journal_rows(kenv, "SELECT * FROM alert_attempts"))
    assert PASSWORD not in every and TOKEN not in every
    assert "HTTP 500" in every


def test_basic_auth_from_the_url_is_sent(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    import base64

    write(kenv, [f"http://knotify:{PASSWORD}@127.0.0.1:{http.port}/prefix/"])
    router.start()
    route([kenv], events(("node1", "INSTANCE", "VI_1", "FAULT", 0)))
    [got] = wait_for(lambda: http.got("/prefix/api/v2/alerts"), 60, what="the post")
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(
        f"knotify:{PASSWORD}".encode()).decode()
    assert PASSWORD not in router.log_text()


HOSTILE = [
    "VI_$(touch /tmp/knotify-pwned);`id`|&>x'\"",
    "VI_ünïcødé_✓_日本",
    "VI_" + "x" * 500,
]


def test_hostile_label_values_go_through_as_data(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    write(kenv, [am.url])
    router.start()
    route([kenv], events(*[("node;rm -rf /", "INSTANCE", name, "FAULT", 0)
                           for name in HOSTILE]))
    found = wait_for(lambda: len(got := mine(am, alertname="KnotifyVRRP")) == 3 and got, 60,
                     what="three alerts")
    assert sorted(a["labels"]["instance"] for a in found) == sorted(HOSTILE)
    assert {a["labels"]["host"] for a in found} == {"node;rm -rf /"}
    assert not Path("/tmp/knotify-pwned").exists()


@pytest.mark.parametrize(("body", "field", "says"), [
    ('urls = ["ftp://127.0.0.1:9093"]', "receivers.am.urls[0]", "http:// or https://"),
    ('urls = ["http://127.0.0.1:9093/api/v2/alerts"]', "receivers.am.urls[0]", "base URL"),
    ("urls = []", "receivers.am.urls", "needs urls"),
    ('urls = ["http://127.0.0.1:9093"]\nbearer_token = "a"\nbearer_token_file = "/x"',
     "receivers.am.bearer_token_file", "not both"),
    ('urls = ["http://127.0.0.1:9093"]\nbearer_token_file = "/nonexistent/token"',
     "receivers.am.bearer_token_file", "cannot read"),
    ('urls = ["http://127.0.0.1:9093"]\nlabels = { alertname = "x" }',
     "receivers.am.labels.alertname", "sets this label itself"),
    ('urls = ["http://127.0.0.1:9093"]\nlabels = { "bad-name" = "x" }',
     "receivers.am.labels.bad-name", "label name"),
    ('urls = ["http://127.0.0.1:9093"]\nlabels = { env = 3 }',
     "receivers.am.labels.env", "non-empty string"),
    ('urls = ["http://127.0.0.1:9093"]\nrepost_interval = "0s"',
     "receivers.am.repost_interval", "1s .. 24h"),
    ('urls = ["http://127.0.0.1:9093"]\ntags = ["x"]', "receivers.am.tags", "apprise"),
    ('urls = ["http://127.0.0.1:9093"]\nrepost = "1m"', "receivers.am.repost", "unknown key"),
    ('urls = ["http://127.0.0.1:9093"]\ngenerator_url = "javascript:x"',
     "receivers.am.generator_url", "http://"),
])
def test_a_malformed_alertmanager_receiver_is_refused_naming_the_field(
    kenv: KEnv, body: str, field: str, says: str
) -> None:
    kenv.write_config(f'[receivers.am]\ntype = "alertmanager"\n{body}\n')
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode != 0
    assert field in proc.stderr + proc.stdout and says in proc.stderr + proc.stdout


def test_an_unknown_receiver_type_is_refused(kenv: KEnv) -> None:
    kenv.write_config('[receivers.am]\ntype = "prometheus"\nurls = ["http://x:9093"]\n')
    proc = kenv.cli("check-config", check=False)
    assert proc.returncode != 0
    assert "receivers.am.type" in proc.stderr and "apprise, alertmanager" in proc.stderr


def test_a_rule_severity_becomes_the_label(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    write(kenv, [am.url], rule=RULE + 'severity = "page"\n')
    router.start()
    route([kenv], events(("node1", "GROUP", "G1", "FAULT", None)))
    [alert] = wait_for(lambda: mine(am, kind="GROUP"), 60, what="the alert")
    assert alert["labels"]["severity"] == "page" and alert["labels"]["instance"] == "G1"


def test_test_alert_posts_a_test_alert(kenv: KEnv, am: Alertmanager) -> None:
    write(kenv, [am.url])
    out = kenv.cli("test-alert", "am").stdout
    assert "ok" in out.lower()
    [alert] = wait_for(lambda: mine(am, alertname="KnotifyTest"), 30, what="the test alert")
    assert alert["labels"]["severity"] == "info"


def test_active_alerts_are_reposted_before_alertmanager_would_end_them(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    write(kenv, [am.url], 'repost_interval = "1s"')  # each post valid for 4 s
    router.start()
    route([kenv], events(("node1", "INSTANCE", "VI_1", "FAULT", 0)))
    [first] = wait_for(lambda: mine(am, instance="VI_1"), 60, what="the alert")
    first_end = dt.datetime.fromisoformat(first["endsAt"]).timestamp()
    assert first_end < time.time() + 10

    def reposted() -> bool:
        done = journal_rows(kenv, "SELECT count(*) FROM alert_messages WHERE alert = "
                            "'repost' AND status = 'sent'")[0][0]
        return bool(done >= 3 and time.time() > first_end + 1)

    wait_for(reposted, 60, what="re-posts past the first post's endsAt")
    [still] = mine(am, instance="VI_1")
    assert still["status"]["state"] == "active"
    assert dt.datetime.fromisoformat(still["endsAt"]).timestamp() > first_end
    assert still["startsAt"] == first["startsAt"]  # the same alert, not a new one


def test_a_router_restart_posts_the_active_alerts_again(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    write(kenv, [am.url])
    router.start()
    route([kenv], events(("node1", "INSTANCE", "VI_1", "FAULT", 0)))
    wait_for(lambda: mine(am, instance="VI_1"), 60, what="the alert")
    router.stop()
    am.stop()
    am.start()
    assert mine(am, instance="VI_1") == []  # Alertmanager keeps no alerts across a restart
    router.start()
    [alert] = wait_for(lambda: mine(am, instance="VI_1"), 60,
                       what="the restarted router to post its active alert again")
    assert alert["labels"]["state"] == "FAULT"
    wait_for(lambda: ("repost", "sent") in journal_rows(
        kenv, "SELECT alert, status FROM alert_messages"), 30, what="the re-post journaled")


def test_a_split_brain_is_one_cluster_alert_resolved_when_it_ends(
    kenv: KEnv, router: RouterProcess, am: Alertmanager
) -> None:
    write(kenv, [am.url], rule="""
[cluster]
split_brain_grace = "1s"
no_master_grace = "1s"

[[rule]]
id = "cluster"
kind = "CLUSTER"
state = ["SPLIT_BRAIN", "SPLIT_BRAIN_RESOLVED"]
[[rule.action]]
type = "alert"
receivers = ["am"]
""")
    router.start()
    route([kenv], events(("n1", "INSTANCE", "VI_1", "MASTER", 100),
                         ("n2", "INSTANCE", "VI_1", "BACKUP", 90)))
    route([kenv], events(("n2", "INSTANCE", "VI_1", "MASTER", 90)))
    [alert] = wait_for(lambda: mine(am, alertname="KnotifyCluster"), 60,
                       what="the SPLIT_BRAIN alert")
    assert alert["labels"] == {"alertname": "KnotifyCluster", "kind": "CLUSTER",
                               "cluster": "VI_1", "state": "SPLIT_BRAIN",
                               "severity": "critical"}
    assert alert["annotations"]["detected_by"]  # the router: an annotation, not a label
    route([kenv], events(("n1", "INSTANCE", "VI_1", "BACKUP", 100)))
    wait_for(lambda: not mine(am, alertname="KnotifyCluster"), 60,
             what="the SPLIT_BRAIN alert resolved")
    # SPLIT_BRAIN_RESOLVED ends the alert; it is never an alert of its own.
    assert not [a for a in am.alerts() if a["labels"].get("state") == "SPLIT_BRAIN_RESOLVED"]
