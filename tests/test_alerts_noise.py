"""Noise control with a real router and a real webhook: grouping, flaps, repeats, silences.

Each test fails if its feature breaks: without grouping there would be one
message per event, without flap control one per transition, without repeat
suppression one per report, without silences the muted ones would arrive.
"""

from __future__ import annotations

import json
import sys

from alert_servers import FAST_ALERTS, HttpSink, alert_items, settled
from conftest import KEnv, RouterProcess, wait_for


def write(kenv: KEnv, http: HttpSink, rule: str, alerts: str = FAST_ALERTS) -> None:
    kenv.write_config(alerts + f"""
[receivers.chat]
urls = ["{http.url()}"]
""" + rule)


ALERT_ALL = """
[[rule]]
id = "alert"
on = "{on}"
{match}
[[rule.action]]
type = "alert"
receivers = ["chat"]
{extra}
"""


def rule(on: str = "transition", match: str = "", extra: str = "") -> str:
    return ALERT_ALL.format(on=on, match=match, extra=extra)


def statuses(kenv: KEnv) -> list[tuple[str, str, str]]:
    return [(i["event"]["name"], i["alert"], i["status"]) for i in alert_items(kenv.history())]


def wait_settled(kenv: KEnv) -> None:
    wait_for(lambda: settled(kenv.history()), 30, what="the alerts to settle")


def titles(http: HttpSink) -> list[str]:
    return [r.json["title"] for r in http.got()]


def test_one_failover_on_one_host_is_one_message(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule(match='state = "MASTER"'),
          alerts=FAST_ALERTS.replace('"300ms"', '"1500ms"', 1))
    router.start()
    kenv.send_together(("node1", "GROUP", "G1", "MASTER", 0),
                       ("node1", "INSTANCE", "VI_1", "MASTER", 100),
                       ("node1", "INSTANCE", "VI_2", "MASTER", 100),
                       ("node2", "INSTANCE", "VI_3", "MASTER", 100))
    wait_settled(kenv)
    # A later failover on another host: once its message is there, no other one follows.
    kenv.cli("send", "--host", "node3", "INSTANCE", "VI_4", "MASTER", "100")
    wait_for(lambda: "[node3] VI_4 INIT -> MASTER" in titles(http), 30,
             what="the later failover's message")
    got = sorted(titles(http))
    assert got == ["[node1] G1, VI_1, VI_2 -> MASTER", "[node2] VI_3 INIT -> MASTER",
                   "[node3] VI_4 INIT -> MASTER"]
    [grouped] = [r.json for r in http.got() if "node1" in r.json["title"]]
    body = grouped["message"]
    for name in ("GROUP G1: INIT -> MASTER", "INSTANCE VI_1: INIT -> MASTER (prio 100)",
                 "INSTANCE VI_2: INIT -> MASTER (prio 100)"):
        assert name in body
    assert body.index("G1") < body.index("VI_1") < body.index("VI_2")
    ids = [e["id"] for e in reversed(kenv.history()) if e["host"] == "node1"]
    assert body.rstrip().endswith("knotify events: " + ", ".join(ids))
    messages = {i["message"]["id"] for i in alert_items(kenv.history())}
    assert len(messages) == 3


def test_group_by_nothing_puts_every_host_in_one_message(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule(), alerts=FAST_ALERTS.replace('"300ms"', '"1500ms"', 1)
          + "group_by = []\n")
    router.start()
    kenv.send_together(("a", "INSTANCE", "VI_1", "BACKUP", 100),
                       ("b", "INSTANCE", "VI_1", "MASTER", 100))
    wait_settled(kenv)
    assert titles(http) == ["[a, b] 2 changes: VI_1 INIT -> BACKUP, VI_1 INIT -> MASTER"]


def test_flapping_becomes_one_alert_then_quiet_then_stable_again(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule(), alerts=FAST_ALERTS.replace("flap_threshold = 0", """
flap_threshold = 3
flap_window = "1m"
flap_stable = "2s"
"""))
    router.start()
    # In one message: two sends further apart than flap_stable on a loaded machine would
    # end the flap in between.
    kenv.send_together(*[("n1", "INSTANCE", "VI_1", state, 100) for state in (
        "BACKUP", "MASTER", "BACKUP", "MASTER", "BACKUP", "MASTER")])
    wait_for(lambda: any(a == "stable" for _, a, _ in statuses(kenv)), 30,
             what="the stable-again alert")
    wait_settled(kenv)
    got = statuses(kenv)
    assert [(a, s) for _, a, s in got] == [
        ("firing", "composed"), ("firing", "composed"), ("firing", "composed"),
        ("flapping", "composed"), ("firing", "suppressed"), ("firing", "suppressed"),
        ("stable", "composed")]
    bodies = [r.json["message"] for r in http.got()]
    flapping = [b for b in bodies if "flapping: 4 changes in 1m00s, now MASTER" in b]
    stable = [b for b in bodies if "stable again: MASTER for" in b]
    assert len(flapping) == 1 and len(stable) == 1
    assert "(2 changes not alerted)" in stable[0]
    assert len([t for t in titles(http) if "VI_1 is flapping" in t]) == 1
    suppressed = [i for i in alert_items(kenv.history()) if i["status"] == "suppressed"]
    assert all("is flapping" in i["detail"] for i in suppressed)


def test_repeated_reports_of_a_bad_state_are_suppressed(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule(on="every", match='state = "FAULT"', extra='repeat_interval = "0s"'))
    router.start()
    for _ in range(3):
        kenv.cli("send", "INSTANCE", "VI_1", "FAULT", "0")
    wait_settled(kenv)
    assert [(a, s) for _, a, s in statuses(kenv)] == [
        ("firing", "composed"), ("firing", "suppressed"), ("firing", "suppressed")]
    assert len(http.got()) == 1
    detail = [i["detail"] for i in alert_items(kenv.history()) if i["status"] == "suppressed"]
    assert all("FAULT was already alerted" in d for d in detail)


def test_repeat_interval_reminds_while_a_state_stays_bad_and_stops_after(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule(extra='repeat_interval = "1s"'))
    router.start()
    kenv.cli("send", "--host", "r1", "RS", "[10.0.0.5]:tcp:80 [10.0.0.100]:tcp:80", "DOWN")
    wait_for(lambda: len([t for t in titles(http) if "still DOWN" in t]) >= 2, 30,
             what="two reminders")
    assert titles(http)[0] == "[r1] [10.0.0.5]:tcp:80 in [10.0.0.100]:tcp:80 INIT -> DOWN"
    reminder = next(r.json for r in http.got() if "still DOWN" in r.json["title"])
    assert reminder["type"] == "failure"
    assert "still DOWN (for " in reminder["message"]
    kenv.cli("send", "--host", "r1", "RS", "[10.0.0.5]:tcp:80 [10.0.0.100]:tcp:80", "UP")
    wait_for(lambda: any("DOWN -> UP" in t for t in titles(http)), 30, what="the UP alert")
    wait_settled(kenv)
    up_at = next(i for i, t in enumerate(titles(http)) if "DOWN -> UP" in t)
    # The router's own clock as the marker: another server goes DOWN now, and once two of
    # its reminders came, a reminder of the first one (were it still due) would have too.
    kenv.cli("send", "--host", "r1", "RS", "[10.0.0.6]:tcp:80 [10.0.0.100]:tcp:80", "DOWN")
    wait_for(lambda: len([t for t in titles(http) if "10.0.0.6" in t and "still DOWN" in t]) >= 2,
             30, what="two reminders of the other server")
    after_up = titles(http)[up_at + 1:]
    assert [t for t in after_up if "10.0.0.5" in t] == []
    repeats = [i for i in alert_items(kenv.history())
               if i["alert"] == "repeat" and i["event"]["name"] == "[10.0.0.5]:tcp:80"]
    assert len(repeats) >= 2 and all(i["event"]["state"] == "DOWN" for i in repeats)


def test_silence_mutes_matching_alerts_is_journaled_and_can_be_expired(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule(), alerts=FAST_ALERTS + 'group_by = ["host", "name"]\n')
    router.start()
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_1", "BACKUP", "100")
    added = kenv.cli("silence", "add", "name=VI_1", "host=node*", "state!=BACKUP",
                     "--for", "2h", "--reason", "kernel upgrade")
    assert "added silence 1 (active): name=VI_1 host=node* state!=BACKUP" in added.stdout
    assert "node1 INSTANCE VI_1 (BACKUP)" not in added.stdout
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_2", "MASTER", "100")
    kenv.cli("send", "--host", "other", "INSTANCE", "VI_1", "MASTER", "100")
    wait_settled(kenv)
    items = alert_items(kenv.history())
    silenced = [i for i in items if i["status"] == "silenced"]
    assert [(i["event"]["host"], i["event"]["name"], i["event"]["state"]) for i in silenced] \
        == [("node1", "VI_1", "MASTER")]
    assert silenced[0]["detail"].startswith("silence 1 (kernel upgrade, by ")
    [run] = silenced[0]["event"]["actions"]
    assert run["status"] == "silenced"
    sent = {(r.json["title"]) for r in http.got()}
    assert not any("[node1] VI_1 BACKUP -> MASTER" in t for t in sent)
    assert len(http.got()) == 3  # the BACKUP before the silence, VI_2, and 'other'
    listed = json.loads(kenv.cli("silence", "list", "--json").stdout)
    assert [(s["id"], s["status"], s["reason"]) for s in listed] == [(1, "active",
                                                                       "kernel upgrade")]
    text = kenv.cli("silence", "list").stdout
    assert "name=VI_1 host=node* state!=BACKUP" in text and "kernel upgrade" in text
    # Silences are journaled: they survive a restart.
    router.stop()
    router.start()
    assert json.loads(kenv.cli("silence", "list", "--json").stdout)[0]["status"] == "active"
    assert "expired silence 1" in kenv.cli("silence", "expire", "1").stdout
    assert kenv.cli("silence", "list").stdout.strip() == "no silences"
    assert json.loads(kenv.cli("silence", "list", "--all", "--json").stdout)[0]["status"] \
        == "expired"
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_1", "FAULT", "0")
    wait_for(lambda: any("[node1] VI_1 MASTER -> FAULT" in t for t in titles(http)), 30,
             what="the alert after the silence expired")


def test_silence_added_while_an_alert_waits_in_its_group_window_mutes_it(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    # A window of 10 s: the one command between the event and the silence (silence add)
    # fits in it even on a loaded machine.
    write(kenv, http, rule(), alerts=FAST_ALERTS.replace('"300ms"', '"10s"', 1))
    router.start()
    kenv.cli("send", "--host", "w1", "INSTANCE", "VI_1", "FAULT", "0")
    kenv.cli("silence", "add", "host=w1", "--for", "10m", "--reason", "maintenance")
    wait_settled(kenv)
    [item] = alert_items(kenv.history())
    assert (item["alert"], item["status"]) == ("firing", "silenced")
    # It waited in its group window before the silence existed: muted there, not at once.
    [silence] = json.loads(kenv.cli("silence", "list", "--json").stdout)
    assert item["created_ns"] < silence["created_ns"]
    assert http.got() == []


def test_silence_errors_are_clear(kenv: KEnv, router: RouterProcess, http: HttpSink) -> None:
    write(kenv, http, rule())
    router.start()
    bad = kenv.cli("silence", "add", "nme=VI_1", "--for", "1h", "--reason", "x", check=False)
    assert bad.returncode == 1 and "unknown field 'nme'" in bad.stderr
    bad = kenv.cli("silence", "add", "VI_1", "--for", "1h", "--reason", "x", check=False)
    assert "must be FIELD=VALUE or FIELD!=VALUE" in bad.stderr
    bad = kenv.cli("silence", "add", "name=VI_1", "--for", "soon", "--reason", "x", check=False)
    assert bad.returncode == 2 and "--for" in bad.stderr
    bad = kenv.cli("silence", "expire", "42", check=False)
    assert bad.returncode == 1 and "no silence 42" in bad.stderr


RECORDER = """#!{python}
import sys
with open(sys.argv[1], "a") as fh:
    fh.write(" ".join(sys.argv[2:]) + "\\n")
"""


def test_exec_actions_honour_silences_only_where_the_rule_says_so(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    script = kenv.root / "rec.py"
    script.write_text(RECORDER.format(python=sys.executable))
    script.chmod(0o755)
    out = kenv.root / "out.txt"
    write(kenv, http, f"""
[[rule]]
id = "quiet"
honor_silences = true
[[rule.action]]
type = "exec"
argv = ["{script}", "{out}", "quiet", "{{host}}", "{{state}}"]

[[rule]]
id = "loud"
[[rule.action]]
type = "exec"
argv = ["{script}", "{out}", "loud", "{{host}}", "{{state}}"]
""")
    router.start()
    kenv.cli("silence", "add", "host=node1", "--for", "1h", "--reason", "maintenance")
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "--host", "node2", "INSTANCE", "VI_1", "MASTER", "100")
    # Every run is journaled with its event; once none is pending or running, no action
    # can still write a line.
    wait_for(lambda: (runs := [a for e in kenv.history() for a in e["actions"]]) and all(
        a["status"] not in ("pending", "running") for a in runs), 20, what="every run to end")
    assert sorted(out.read_text().splitlines()) == [
        "loud node1 MASTER", "loud node2 MASTER", "quiet node2 MASTER"]
    runs = {(e["host"], a["rule"]): a for e in kenv.history() for a in e["actions"]}
    assert runs[("node1", "quiet")]["status"] == "silenced"
    assert runs[("node1", "quiet")]["detail"].startswith("silence 1 (maintenance, by ")
    assert runs[("node1", "loud")]["status"] == "ok"
    assert runs[("node2", "quiet")]["status"] == "ok"


def test_history_text_shows_alerts_and_their_attempts(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule())
    router.start()
    kenv.cli("send", "--host", "h", "INSTANCE", "VI_1", "MASTER", "100")
    wait_settled(kenv)
    lines = kenv.cli("history").stdout.splitlines()
    assert lines[1].strip().startswith("-> alert#0 alert: ok")
    assert lines[1].endswith("firing alert queued for chat (grouped for 300ms)")
    assert lines[2].strip() == "=> alert chat (firing): composed"
    assert lines[3].strip().startswith("message 1 to chat: sent, 1 event(s): [h] VI_1 INIT ->")
    assert lines[4].strip().startswith("attempt 1: ok in ") and http.url() in lines[4]


def test_news_is_never_taken_for_a_repeat(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, http, rule(on="every", match='state = "MASTER*"'))
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")           # a repeat: suppressed
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER_PRIORITY", "90")   # news: alerted
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER_PRIORITY", "80")   # more news: alerted
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER_PRIORITY", "80")   # the same news again
    wait_settled(kenv)
    assert [s for _, _, s in statuses(kenv)] == [
        "composed", "suppressed", "composed", "composed", "suppressed"]
