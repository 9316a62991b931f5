"""What a page says and when it leaves, with a real router and real receivers (issue 11).

An alert never waits behind the other actions of its instance; a page names the hosts,
states and times involved; flap control counts only what happened while its rule
existed; what ends an incident reaches the rule that paged for it. Order is proven
from the journal, never from the wall clock.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from alert_servers import FAST_ALERTS, HttpSink, SmtpSink, alert_items
from conftest import KEnv, RouterProcess, wait_for


def write(kenv: KEnv, http: HttpSink, rules: str, alerts: str = FAST_ALERTS) -> None:
    kenv.write_config(alerts + f"""
[receivers.chat]
urls = ["{http.url()}"]
""" + rules)


def runs(history: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [a for ev in history for a in ev["actions"] if a["rule"] == rule]


def sent_attempts(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for item in alert_items(history) if item.get("message")
            for a in item["message"]["attempts"] if a["status"] == "ok"]


HANG_THEN_PAGE = """
[[rule]]
id = "restart"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["sleep", "{sleep}"]
timeout = "{timeout}"

[[rule]]
id = "page"
state = "MASTER"
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def test_alert_is_delivered_while_an_earlier_exec_of_its_instance_still_runs(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    """The exec rule comes first and sleeps 30 s; the page is sent while it sleeps."""
    write(kenv, http, HANG_THEN_PAGE.format(sleep=30, timeout="60s"))
    router.start()
    kenv.cli("send", "--host", "lb1", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: http.got(), 20, what="the page")
    history = wait_for(lambda: (h := kenv.history()) and sent_attempts(h) and h, 20,
                       what="the delivery to be journaled")
    # Journal order: the delivery is recorded while the exec's run is still open.
    [restart] = runs(history, "restart")
    assert restart["status"] == "running" and restart["ended_ns"] is None, restart
    [page] = runs(history, "page")
    assert page["status"] == "ok"
    [attempt] = sent_attempts(history)
    # The router stops (and starts again to answer): the sleeping exec was cut
    # (interrupted) after the delivery had ended.
    router.stop()
    router.start()
    history = kenv.history()
    [restart] = runs(history, "restart")
    assert restart["status"] == "interrupted"
    assert attempt["ended_ns"] < restart["ended_ns"]
    [title] = [r.json["title"] for r in http.got()]
    assert "MASTER" in title


def test_actions_other_than_alerts_keep_their_order_within_the_instance(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    """Two execs of one instance still run one after the other, in rule order."""
    write(kenv, http, """
[[rule]]
id = "first"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["sleep", "1"]

[[rule]]
id = "second"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["true"]
""")
    router.start()
    kenv.cli("send", "--host", "lb1", "INSTANCE", "VI_1", "MASTER", "100")
    history = wait_for(lambda: (h := kenv.history()) and all(
        a["status"] == "ok" for a in runs(h, "first") + runs(h, "second"))
        and runs(h, "second") and h, 30, what="both execs to end")
    [first] = runs(history, "first")
    [second] = runs(history, "second")
    assert first["ended_ns"] <= second["started_ns"]


# -- every page says what happened, where and when -------------------------------------

#: An alert time: date, time and the UTC offset (ISO 8601).
ISO = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d\b")
#: A time in plain history: date, time (ms) and the UTC offset.
HISTORY_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d  ")

CLUSTER_PAGES = """
[cluster]
split_brain_grace = "1s"
no_master_grace = "1s"
silent_after = "2s"
{peers}

[receivers.mail]
urls = ["{mail}"]

[[rule]]
id = "cluster-page"
kind = ["CLUSTER", "PEER"]
[[rule.action]]
type = "alert"
receivers = ["chat", "mail"]
"""


def send(kenv: KEnv, host: str, name: str, state: str) -> None:
    kenv.cli("send", "--host", host, "INSTANCE", name, state, "100")


def pages(http: HttpSink, state: str) -> list[dict[str, Any]]:
    return [r.json for r in http.got() if state in r.json["title"].split()]


def test_cluster_pages_name_hosts_states_real_from_and_dated_times(
    kenv: KEnv, router: RouterProcess, http: HttpSink, smtp: SmtpSink
) -> None:
    write(kenv, http, CLUSTER_PAGES.format(peers="", mail=smtp.url()))
    router.start()
    for host, state in (("n1", "MASTER"), ("n2", "BACKUP"), ("n3", "BACKUP")):
        send(kenv, host, "VI_1", state)
    send(kenv, "n2", "VI_1", "MASTER")
    [split] = wait_for(lambda: pages(http, "SPLIT_BRAIN"), 30, what="the SPLIT_BRAIN page")
    # The title names the hosts that are all MASTER, not the router that noticed.
    assert split["title"] == "[n1, n2] VI_1: SPLIT_BRAIN", split["title"]
    # The body says for how long, who else is there, and when (date and zone).
    assert "n1, n2 are all MASTER for 1" in split["message"], split["message"]
    assert "n3 BACKUP" in split["message"]
    assert ISO.search(split["message"]), split["message"]
    assert "INIT" not in split["message"] and "INIT" not in split["title"]
    mail = wait_for(lambda: [m for m in smtp.mails if "SPLIT_BRAIN" in m.subject], 30,
                    what="the SPLIT_BRAIN e-mail")[0]
    assert mail.subject == "[n1, n2] VI_1: SPLIT_BRAIN"
    assert "n1, n2 are all MASTER" in mail.body and ISO.search(mail.body)

    send(kenv, "n2", "VI_1", "BACKUP")
    [over] = wait_for(lambda: pages(http, "SPLIT_BRAIN_RESOLVED"), 30,
                      what="the SPLIT_BRAIN_RESOLVED page")
    assert over["title"] == "[n1, n2, n3] VI_1: SPLIT_BRAIN -> SPLIT_BRAIN_RESOLVED"
    assert "n1 is the only MASTER" in over["message"]

    send(kenv, "n1", "VI_1", "STOP")  # n2 and n3 are BACKUP: nobody is MASTER
    [none] = wait_for(lambda: pages(http, "NO_MASTER"), 30, what="the NO_MASTER page")
    # The "from" is the previous condition (none), not the resolution before it.
    assert "SPLIT_BRAIN_RESOLVED" not in none["title"] + none["message"]
    assert none["title"] == "[n1, n2, n3] VI_1: NO_MASTER", none["title"]
    assert "no MASTER for 1" in none["message"]
    # Every host and its state.
    assert "(n2 BACKUP, n3 BACKUP, n1 STOP)" in none["message"], none["message"]

    send(kenv, "n3", "VI_1", "MASTER")
    [back] = wait_for(lambda: pages(http, "MASTER_BACK"), 30, what="the MASTER_BACK page")
    assert back["title"] == "[n1, n2, n3] VI_1: NO_MASTER -> MASTER_BACK", back["title"]
    assert "n3 is MASTER" in back["message"]

    # The journal's previous states are the conditions too ...
    cluster = {e["reported"]: e for e in kenv.history(kind="CLUSTER")}
    assert [cluster[s]["prev_state"] for s in (
        "SPLIT_BRAIN", "SPLIT_BRAIN_RESOLVED", "NO_MASTER", "MASTER_BACK")] == [
        "OK", "SPLIT_BRAIN", "OK", "NO_MASTER"]
    # ... and plain history says all of it, dated, without --json.
    text = kenv.cli("history", "--kind", "CLUSTER").stdout
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith(" ")]
    assert len(lines) == 4 and all(HISTORY_TIME.match(ln) for ln in lines), text
    [split_line] = [ln for ln in lines if " SPLIT_BRAIN: " in ln]
    assert "n1, n2 are all MASTER for 1" in split_line and "n3 BACKUP" in split_line
    [none_line] = [ln for ln in lines if " NO_MASTER: " in ln]
    assert "SPLIT_BRAIN_RESOLVED" not in none_line and "n1 STOP" in none_line
    [back_line] = [ln for ln in lines if "NO_MASTER -> MASTER_BACK: " in ln]
    assert "n3 is MASTER" in back_line


def test_peer_silent_page_names_the_host_and_since_when(
    kenv: KEnv, router: RouterProcess, http: HttpSink, smtp: SmtpSink
) -> None:
    write(kenv, http, CLUSTER_PAGES.format(peers='peers = ["n3"]', mail=smtp.url()))
    router.start()
    send(kenv, "n3", "VI_1", "BACKUP")
    [heard] = kenv.history(host="n3")
    [silent] = wait_for(lambda: pages(http, "PEER_SILENT"), 30, what="the PEER_SILENT page")
    assert silent["title"] == "[n3] n3 PEER_SILENT", silent["title"]
    # Since when: the time it was last heard from, with its date and zone.
    last = dt.datetime.fromtimestamp(heard["recv_ns"] / 1e9).astimezone()
    assert f"not heard from since {last.isoformat(timespec='seconds')}" in silent["message"], \
        silent["message"]
    send(kenv, "n3", "VI_1", "BACKUP")
    [back] = wait_for(lambda: pages(http, "PEER_BACK"), 30, what="the PEER_BACK page")
    assert back["title"] == "[n3] n3 PEER_SILENT -> PEER_BACK", back["title"]
    text = kenv.cli("history", "--kind", "PEER").stdout
    assert "PEER_SILENT: not heard from since " in text, text


def test_instance_pages_and_plain_history_carry_date_and_zone(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, """
[[rule]]
id = "page"
kind = "INSTANCE"
[[rule.action]]
type = "alert"
receivers = ["chat"]
""")
    router.start()
    send(kenv, "lb1", "VI_1", "BACKUP")
    [ev] = kenv.history()
    [page] = wait_for(lambda: http.got(), 30, what="the page")
    when = dt.datetime.fromtimestamp(ev["ts_ns"] / 1e9).astimezone()
    assert when.isoformat(timespec="seconds") in page.json["message"], page.json["message"]
    [line] = kenv.cli("history").stdout.splitlines()[:1]
    assert HISTORY_TIME.match(line), line


# -- flap control counts only what happened while the rule existed ---------------------

#: Flap control on: more than 2 transitions within 10 minutes is a flap.
FLAP_ALERTS = FAST_ALERTS.replace("flap_threshold = 0", """flap_threshold = 2
flap_window = "10m"
flap_stable = "10m\"""")

PAGE_VI_1 = """
[[rule]]
id = "page"
name = "VI_1"
{extra}
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def flip(kenv: KEnv, *states: str) -> None:
    for state in states:
        send(kenv, "lb1", "VI_1", state)


def items(kenv: KEnv) -> list[tuple[str, str, str]]:
    """(state, alert, status) of every alert item, oldest first."""
    return [(i["event"]["state"], i["alert"], i["status"]) for i in alert_items(kenv.history())]


def test_flap_control_counts_only_transitions_since_the_rule_existed(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    # VI_1 changes four times while no alert rule exists.
    write(kenv, http, "", alerts=FLAP_ALERTS)
    router.start()
    flip(kenv, "MASTER", "BACKUP", "MASTER", "BACKUP")
    # The alert rule is enabled; the next real failover pages as a failover.
    write(kenv, http, PAGE_VI_1.format(extra=""), alerts=FLAP_ALERTS)
    kenv.cli("reload")
    flip(kenv, "MASTER")
    [page] = wait_for(lambda: http.got(), 30, what="the first page").copy()
    assert page.json["title"] == "[lb1] VI_1 BACKUP -> MASTER", page.json["title"]
    assert items(kenv) == [("MASTER", "firing", "composed")]
    flip(kenv, "BACKUP")
    wait_for(lambda: len(items(kenv)) == 2, 30, what="two alert items")
    assert items(kenv)[-1] == ("BACKUP", "firing", "composed"), items(kenv)

    # A restart keeps the rule's history (same id, same matchers: the same rule), and
    # flap control still works on what happened since: the third transition (more
    # than 2) starts a flap.
    router.stop()
    router.start()
    flip(kenv, "MASTER")
    wait_for(lambda: len(items(kenv)) == 3, 30, what="a third alert item")
    assert items(kenv)[-1][:2] == ("MASTER", "flapping"), items(kenv)

    # The same id with other matchers is a new rule: it counts from the reload, and the
    # flap of the old definition does not hold its alerts back.
    write(kenv, http, PAGE_VI_1.format(extra='host = "lb*"'), alerts=FLAP_ALERTS)
    kenv.cli("reload")
    flip(kenv, "BACKUP")
    wait_for(lambda: len(items(kenv)) == 4, 30, what="a fourth alert item")
    assert items(kenv)[-1] == ("BACKUP", "firing", "composed"), items(kenv)
    wait_for(lambda: any(r.json["title"] == "[lb1] VI_1 MASTER -> BACKUP"
                         for r in http.got()), 30, what="the page of the new rule")


# -- what ends an incident reaches the rule that paged for it ---------------------------

#: The docs' cluster example (docs/cluster.md), with a webhook as the receiver.
CLUSTER_EXAMPLE = """
[cluster]
split_brain_grace = "1s"
no_master_grace = "1s"

[[rule]]
id = "page-on-cluster-trouble"
kind = ["CLUSTER", "PEER"]
state = ["SPLIT_BRAIN", "NO_MASTER", "PEER_SILENT"]
{extra}
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""


def test_a_cluster_rule_pages_once_per_incident_and_once_when_it_ends(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, CLUSTER_EXAMPLE.format(extra=""))
    router.start()
    for host, state in (("n1", "MASTER"), ("n2", "BACKUP")):
        send(kenv, host, "VI_1", state)
    send(kenv, "n2", "VI_1", "MASTER")
    wait_for(lambda: pages(http, "SPLIT_BRAIN"), 30, what="the SPLIT_BRAIN page")
    send(kenv, "n2", "VI_1", "BACKUP")
    [over] = wait_for(lambda: pages(http, "SPLIT_BRAIN_RESOLVED"), 30,
                      what="the page that says the split brain is over")
    assert over["title"] == "[n1, n2] VI_1: SPLIT_BRAIN -> SPLIT_BRAIN_RESOLVED"
    send(kenv, "n1", "VI_1", "BACKUP")
    wait_for(lambda: pages(http, "NO_MASTER"), 30, what="the NO_MASTER page")
    send(kenv, "n1", "VI_1", "MASTER")
    [back] = wait_for(lambda: pages(http, "MASTER_BACK"), 30, what="the MASTER_BACK page")
    assert back["title"] == "[n1, n2] VI_1: NO_MASTER -> MASTER_BACK"
    # Once per incident and once when it ends: four pages, nothing else.
    assert [r.json["title"].split()[-1] for r in http.got()] == [
        "SPLIT_BRAIN", "SPLIT_BRAIN_RESOLVED", "NO_MASTER", "MASTER_BACK"]


def test_an_instance_leaving_the_paged_state_reaches_the_rule_that_paged(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, """
[[rule]]
id = "fault"
kind = "INSTANCE"
state = "FAULT"
name = "!VI_2"
[[rule.action]]
type = "exec"
argv = ["/bin/true"]
[[rule.action]]
type = "alert"
receivers = ["chat"]

[[rule]]
id = "quiet-fault"
kind = "INSTANCE"
state = "FAULT"
name = "VI_2"
send_resolved = false
[[rule.action]]
type = "alert"
receivers = ["chat"]
""")
    router.start()
    # VI_3 was never paged for: its leaving BACKUP, or reaching MASTER, pages nothing.
    send(kenv, "lb1", "VI_3", "BACKUP")
    send(kenv, "lb1", "VI_1", "BACKUP")
    send(kenv, "lb1", "VI_1", "FAULT")
    wait_for(lambda: pages(http, "FAULT"), 30, what="the FAULT page")
    send(kenv, "lb1", "VI_1", "BACKUP")
    [ended] = wait_for(lambda: [p for p in pages(http, "BACKUP")
                                if p["title"].endswith("-> BACKUP")], 30,
                       what="the page that says VI_1 left FAULT")
    assert ended["title"] == "[lb1] VI_1 FAULT -> BACKUP"
    # Only the alert action hears of the end: the exec ran once, for FAULT.
    history = kenv.history()
    assert [(a["rule"], a["kind"]) for ev in reversed(history) for a in ev["actions"]] == [
        ("fault", "exec"), ("fault", "alert"), ("fault", "alert")]
    # send_resolved = false: a rule that wants only the incident.
    send(kenv, "lb1", "VI_2", "FAULT")
    wait_for(lambda: len(pages(http, "FAULT")) == 2, 30, what="the VI_2 FAULT page")
    send(kenv, "lb1", "VI_2", "BACKUP")
    # (Runs are journaled with their event: once it is in history, so are they.)
    [left] = [e for e in kenv.history(name="VI_2") if e["state"] == "BACKUP"]
    assert left["prev_state"] == "FAULT" and left["actions"] == []
