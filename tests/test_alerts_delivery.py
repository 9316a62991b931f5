"""Alert delivery against real servers: e-mail, json://, Mattermost; outages, crashes, secrets.

The router is a real process, the SMTP and HTTP servers are real (in the test
process), and apprise runs in knotify's sender processes exactly as in
production. Nothing here asserts a duration: it polls for outcomes.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from alert_servers import (
    FAST_BY_HOST,
    PASSWORD,
    TOKEN,
    HttpSink,
    SmtpSink,
    alert_items,
    settled,
)
from conftest import KEnv, RouterProcess, wait_for


def write(kenv: KEnv, receivers: str, rule: str = "", alerts: str = FAST_BY_HOST) -> None:
    kenv.write_config(alerts + receivers + (rule or """
[[rule]]
id = "alert"
kind = ["INSTANCE", "GROUP"]
[[rule.action]]
type = "alert"
receivers = ["chat"]
"""))


def wait_settled(kenv: KEnv, timeout: float = 30) -> list[dict[str, object]]:
    return list(wait_for(lambda: (h := kenv.history()) and settled(h) and h, timeout,
                         what="every alert to be delivered or given up"))


def test_email_reaches_a_real_smtp_server_with_recipient_subject_and_body(
    kenv: KEnv, router: RouterProcess, smtp: SmtpSink
) -> None:
    write(kenv, f"""
[receivers.mail]
urls = ["{smtp.url(to='oncall@example.com')}"]
""", rule="""
[[rule]]
id = "fault"
state = "FAULT"
[[rule.action]]
type = "alert"
receivers = ["mail"]
""")
    router.start()
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_1", "MASTER", "100")
    kenv.cli("send", "--host", "node1", "INSTANCE", "VI_1", "FAULT", "0")
    wait_for(lambda: smtp.mails, 30, what="the e-mail")
    [mail] = smtp.mails
    assert mail.rcpt_tos == ["oncall@example.com"]
    assert mail.mail_from == "knotify@example.com"
    assert mail.subject == "[node1] VI_1 MASTER -> FAULT"
    [fault] = [e for e in kenv.history() if e["state"] == "FAULT"]
    assert "node1 INSTANCE VI_1: MASTER -> FAULT (prio 0, after" in mail.body
    assert f"knotify event {fault['id']}" in mail.body
    [item] = alert_items(kenv.history())
    assert item["status"] == "composed" and item["message"]["status"] == "sent"
    [attempt] = item["message"]["attempts"]
    assert attempt["status"] == "ok" and attempt["urls"][0]["ok"]
    assert attempt["urls"][0]["url"].startswith("mailto://127.0.0.1:")


def test_json_and_mattermost_webhooks_get_the_message(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/json', auth='ops:' + PASSWORD)}", "{http.mattermost_url()}"]
""")
    router.start()
    kenv.cli("send", "--host", "node2", "INSTANCE", "VI_9", "MASTER", "150")
    wait_for(lambda: len(http.got()) == 2, 30, what="both webhooks")
    [plain] = http.got("/json")
    payload = plain.json
    assert payload["title"] == "[node2] VI_9 INIT -> MASTER"
    assert "node2 INSTANCE VI_9: INIT -> MASTER (prio 150)" in payload["message"]
    assert payload["type"] == "success"
    assert plain.headers["Authorization"].startswith("Basic ")
    [mm] = http.got("/hooks/")
    assert mm.path == f"/hooks/{TOKEN}"
    text = mm.json["text"]
    assert text.startswith("[node2] VI_9 INIT -> MASTER")
    assert "node2 INSTANCE VI_9: INIT -> MASTER (prio 150)" in text
    [ev] = kenv.history()
    assert ev["id"] in text


def test_receiver_down_then_up_probed_oldest_first_nothing_lost_retries_journaled(
    kenv: KEnv, router: RouterProcess
) -> None:
    sink = HttpSink()  # not started: connection refused
    write(kenv, f"""
[receivers.chat]
urls = ["{sink.url()}"]
""")
    router.start()
    hosts = [f"h{i}" for i in range(5)]
    for host in hosts:
        kenv.cli("send", "--host", host, "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: any(len((i.get("message") or {}).get("attempts", [])) >= 3
                         for i in alert_items(kenv.history())), 30,
             what="several failed attempts while the receiver is down")
    sink.start()
    try:
        wait_for(lambda: len(sink.got()) == 5, 60, what="all five messages after recovery")
        history = wait_settled(kenv)
        # One queue per receiver, oldest first: a later message arriving means nothing
        # before it is still to come (no late duplicate).
        kenv.cli("send", "--host", "h5", "INSTANCE", "VI_1", "MASTER", "100")
        wait_for(lambda: len(sink.got()) >= 6, 60, what="the later message")
        got = [r.json["title"] for r in sink.got()]
        # A failing receiver is probed with its oldest message alone; once that is
        # through, the others (each host its own group) may go out side by side.
        assert got[0] == "[h0] VI_1 INIT -> MASTER"
        assert sorted(got) == [f"[{h}] VI_1 INIT -> MASTER" for h in [*hosts, "h5"]]
        items = alert_items(history)
        assert all(i["message"]["status"] == "sent" for i in items)
        first = next(i for i in items if i["event"]["host"] == "h0")["message"]["attempts"]
        assert [a["status"] for a in first[:-1]] == ["failed"] * (len(first) - 1)
        assert first[-1]["status"] == "ok" and len(first) >= 3
        assert "Connection" in first[0]["urls"][0]["error"]
        failed = [r for r in router.records() if r.get("event") == "alert.attempt_failed"]
        assert failed and all(r["event_ids"] for r in failed)
    finally:
        sink.stop()


def test_router_sigkill_with_pending_alerts_delivers_after_restart_none_twice(
    kenv: KEnv, router: RouterProcess
) -> None:
    sink = HttpSink()
    write(kenv, f"""
[receivers.chat]
urls = ["{sink.url()}"]
""")
    router.start()
    for host in ("a1", "a2", "a3"):
        kenv.cli("send", "--host", host, "INSTANCE", "VI_1", "MASTER", "100")
    # A failing receiver is probed with its oldest message; the others wait behind it.
    wait_for(lambda: len([i for i in alert_items(kenv.history()) if i.get("message")]) == 3
             and any(i["message"]["attempts"] for i in alert_items(kenv.history())), 30,
             what="all three messages to be composed and the first one tried")
    router.kill()
    sink.start()
    try:
        router.start()
        wait_for(lambda: len(sink.got()) == 3, 30, what="the pending messages after restart")
        wait_settled(kenv)
        # A later message through the same queue: once it is there, no resend can follow.
        kenv.cli("send", "--host", "a4", "INSTANCE", "VI_1", "MASTER", "100")
        wait_for(lambda: len(sink.got()) >= 4, 30, what="the later message")
        got = [r.json["title"] for r in sink.got()]
        assert got[0] == "[a1] VI_1 INIT -> MASTER"  # the failing head is probed first
        assert sorted(got) == [f"[{h}] VI_1 INIT -> MASTER" for h in ("a1", "a2", "a3", "a4")]
    finally:
        sink.stop()


@pytest.mark.parametrize("restart", ["while-sending", "after-sender-ended"])
def test_sigkill_during_an_attempt_never_resends_a_url_that_succeeded(
    kenv: KEnv, router: RouterProcess, http: HttpSink, restart: str
) -> None:
    http.behaviour["/slow"] = "sleep:3"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/fast')}", "{http.url('/slow')}", "{http.url('/last')}"]
timeout = "20s"
""")
    router.start()
    kenv.cli("send", "--host", "n1", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: [r for r in http.started if r.path == "/slow"], 30,
             what="the slow URL to be in the middle of its request")
    router.kill()
    if restart == "after-sender-ended":
        wait_for(lambda: http.got("/last"), 30, what="the orphaned sender to finish on its own")
    router.start()
    wait_settled(kenv)
    [item] = alert_items(kenv.history())
    assert item["message"]["status"] == "sent"
    # A later message through the same queue: once it reached the last URL, nothing of the
    # first can still be resent.
    kenv.cli("send", "--host", "n2", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: len(http.got("/last")) >= 2, 60, what="the later message")
    for path in ("/fast", "/slow", "/last"):
        assert [r.json["title"] for r in http.got(path)] == [
            "[n1] VI_1 INIT -> MASTER", "[n2] VI_1 INIT -> MASTER"], path
    if restart == "while-sending":
        assert any(r.get("event") == "alert.adopted" for r in router.records())


def test_hanging_webhook_times_out_and_never_blocks_exec_actions(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/hang"] = "sleep:30"
    out = kenv.root / "exec.out"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/hang')}"]
timeout = "1s"
""", rule=f"""
[[rule]]
id = "both"
[[rule.action]]
type = "alert"
receivers = ["chat"]
[[rule.action]]
type = "exec"
argv = ["/bin/sh", "-c", "echo {{state}} >> {out}"]
""")
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: [r for r in http.started if r.path == "/hang"], 20,
             what="the alert to hang in its webhook")
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    # The next event's actions of the same key ran while the alert still hangs.
    wait_for(lambda: out.exists() and out.read_text().split() == ["MASTER", "BACKUP"], 20,
             what="both exec actions")
    assert not http.got("/hang")
    attempt = wait_for(lambda: next(
        (a for i in alert_items(kenv.history()) if i.get("message")
         for a in i["message"]["attempts"] if a["status"] == "timeout"), None), 30,
        what="an attempt to time out")
    assert attempt["urls"][0]["status"] == "TIMEOUT"
    records = [r for r in router.records() if r.get("event") == "alert.attempt_failed"]
    assert records[0]["status"] == "timeout" and records[0]["event_ids"]


def test_a_sender_stuck_beyond_its_timeout_is_killed_with_its_process_group(
    kenv: KEnv, router: RouterProcess
) -> None:
    # An apprise config file that turns into a FIFO nobody writes: loading it blocks
    # for ever, which apprise's own timeouts cannot interrupt. Only the kill can.
    apprise_file = kenv.root / "apprise.txt"
    apprise_file.write_text("json://127.0.0.1:1/never\n")
    write(kenv, f"""
[receivers.chat]
config = "{apprise_file}"
timeout = "1s"
""")
    router.start()
    apprise_file.unlink()
    os.mkfifo(apprise_file)
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    attempt = wait_for(lambda: next(
        (a for i in alert_items(kenv.history()) if i.get("message")
         for a in i["message"]["attempts"] if a["status"] == "timeout"), None), 30,
        what="the stuck attempt to be killed")
    assert "process group" in attempt["error"] and "killed" in attempt["error"]
    pgid = int(attempt["error"].split("process group ")[1].split()[0])
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_a_retry_sends_only_to_the_urls_not_reached_yet(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/flaky"] = "fail"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/ok')}", "{http.url('/flaky')}"]
""")
    router.start()
    kenv.cli("send", "--host", "n1", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: len([r for r in http.started if r.path == "/flaky"]) >= 3, 30,
             what="three attempts at the failing URL")
    http.behaviour["/flaky"] = "ok"
    wait_for(lambda: http.got("/flaky"), 30, what="the failing URL to be reached at last")
    history = wait_settled(kenv)
    [item] = alert_items(history)
    attempts = item["message"]["attempts"]
    assert item["message"]["status"] == "sent" and len(attempts) >= 4
    # The first attempt reached /ok; every retry went to /flaky alone.
    assert [[u["ok"] for u in a["urls"]] for a in attempts[:1]] == [[True, False]]
    assert all(len(a["urls"]) == 1 and "/flaky" in a["urls"][0]["url"] for a in attempts[1:])
    # A later message through the same queue: once it is there, no resend can follow.
    kenv.cli("send", "--host", "n2", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: len(http.got("/flaky")) >= 2, 30, what="the later message")
    for path in ("/ok", "/flaky"):
        assert [r.json["title"] for r in http.got(path)] == [
            "[n1] VI_1 INIT -> MASTER", "[n2] VI_1 INIT -> MASTER"], path


def test_failing_receiver_falls_back_to_another_one(
    kenv: KEnv, router: RouterProcess, http: HttpSink, smtp: SmtpSink
) -> None:
    http.behaviour["/chat"] = "fail"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/chat')}"]
fallback = "mail"
fallback_after = "500ms"

[receivers.mail]
urls = ["{smtp.url()}"]
""")
    router.start()
    kenv.cli("send", "--host", "n1", "INSTANCE", "VI_1", "FAULT", "0")
    wait_for(lambda: smtp.mails, 30, what="the fallback e-mail")
    [mail] = smtp.mails
    assert mail.subject == "[n1] VI_1 INIT -> FAULT"
    assert "sent to mail because chat failed" in mail.body
    [item] = alert_items(kenv.history())
    message = item["message"]
    assert message["receiver"] == "chat" and message["status"] in ("pending", "sending")
    assert message["escalation"]["receiver"] == "mail"
    assert message["escalation"]["status"] == "sent"
    assert any(r.get("event") == "alert.escalated" for r in router.records())


def test_expired_message_is_journaled_and_the_next_one_goes_out(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/hook"] = "fail"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url()}"]
""", alerts=FAST_BY_HOST + 'max_age = "2s"\n')
    router.start()
    kenv.cli("send", "--host", "x1", "INSTANCE", "VI_1", "FAULT", "0")
    wait_for(lambda: any(i.get("message") and i["message"]["status"] == "expired"
                         for i in alert_items(kenv.history())), 30, what="the message to expire")
    [item] = alert_items(kenv.history())
    assert "gave up after" in item["message"]["detail"]
    assert item["message"]["attempts"]
    http.behaviour["/hook"] = "ok"
    kenv.cli("send", "--host", "x2", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: http.got(), 30, what="the next message")
    assert http.got()[0].json["title"] == "[x2] VI_1 INIT -> MASTER"


def test_secrets_never_reach_logs_history_errors_or_cli_output(
    kenv: KEnv, router: RouterProcess, http: HttpSink, smtp: SmtpSink
) -> None:
    http.behaviour["/"] = "fail"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/j', auth='ops:' + PASSWORD)}", "{http.mattermost_url()}",
        "json://127.0.0.1:1/down?:token={TOKEN}X"]

[receivers.mail]
urls = ["mailto://user:{PASSWORD}@127.0.0.1:{smtp.port}?to=a@example.com&from=b@example.com"]
""", rule="""
[[rule]]
id = "alert"
[[rule.action]]
type = "alert"
receivers = ["chat", "mail"]
""")
    checked = kenv.cli("check-config")
    router.start()
    kenv.cli("send", "INSTANCE", "VI_1", "FAULT", "0")
    wait_for(lambda: sum(len(i["message"]["attempts"]) for i in alert_items(kenv.history())
                         if i.get("message")) >= 4, 30, what="failed attempts on both receivers")
    tested = kenv.cli("test-alert", "chat", check=False)
    assert tested.returncode == 1
    history = kenv.cli("history", "--json").stdout
    text = kenv.cli("history").stdout
    errors = [a["error"] for i in alert_items(json.loads(history)) if i.get("message")
              for a in i["message"]["attempts"] if a["status"] != "running"]
    assert all(errors)
    for output in (router.log_text(), history, text, checked.stdout, checked.stderr,
                   tested.stdout, tested.stderr):
        assert PASSWORD not in output
        assert TOKEN not in output
    assert "ops:****@127.0.0.1" in checked.stdout


def test_test_alert_prints_the_outcome_per_url(kenv: KEnv, http: HttpSink) -> None:
    down = HttpSink()
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/up', auth='me:' + PASSWORD)}", "{down.url('/down')}"]
""")
    proc = kenv.cli("test-alert", "chat", check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(ln.split()[:2] == ["ok", f"json://me:****@127.0.0.1:{http.port}/up"]
               for ln in lines), proc.stdout
    assert any(ln.split()[:2] == ["FAILED", f"json://127.0.0.1:{down.port}/down"]
               and "Connection" in ln for ln in lines), proc.stdout
    [req] = http.got("/up")
    assert req.json["title"].startswith("knotify test alert from ")
    assert PASSWORD not in proc.stdout
    ok = kenv.cli("test-alert", "chat", "--dry-run")
    assert "json://me:****@" in ok.stdout and len(http.got()) == 1
    unknown = kenv.cli("test-alert", "nope", check=False)
    assert unknown.returncode == 2 and "known: chat" in unknown.stderr


def test_sigterm_leaves_queued_alerts_for_the_next_start(
    kenv: KEnv, router: RouterProcess
) -> None:
    sink = HttpSink()
    write(kenv, f"""
[receivers.chat]
urls = ["{sink.url()}"]
""")
    router.start()
    kenv.cli("send", "--host", "t1", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: any(i.get("message") and i["message"]["attempts"]
                         for i in alert_items(kenv.history())), 30, what="a failed attempt")
    assert router.stop(signal.SIGTERM) == 0
    sink.start()
    try:
        router.start()
        wait_for(lambda: sink.got(), 30, what="the message after a clean restart")
        wait_settled(kenv)
        assert len(sink.got()) == 1
    finally:
        sink.stop()
    assert not [p for p in os.listdir(kenv.state / "outbox")]


def test_reload_switches_receivers_and_refuses_a_url_apprise_rejects(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    write(kenv, f'[receivers.chat]\nurls = ["{http.url("/old")}"]\n')
    router.start()
    write(kenv, f'[receivers.chat]\nurls = ["{http.url("/new")}"]\n')
    assert "config reloaded" in kenv.cli("reload").stdout
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    wait_for(lambda: http.got("/new"), 30, what="the alert at the new URL")
    assert http.got("/old") == []
    write(kenv, f'[receivers.chat]\nurls = ["tgram://{PASSWORD}/1"]\n')
    refused = kenv.cli("reload", check=False)
    assert refused.returncode == 1 and "receivers.chat.urls[0]" in refused.stderr
    assert PASSWORD not in refused.stderr
    kenv.cli("send", "INSTANCE", "VI_1", "BACKUP", "100")
    wait_for(lambda: len(http.got("/new")) == 2, 30, what="the old config still in force")
