"""``knotify web`` and ``knotify report`` as processes, over HTTP (no browser here).

A real router journals events sent with ``knotify send``; ``knotify web`` reads the
journal read-only and follows the router's PUB socket. Checked: every page answers,
with the data; a token or users file refuses requests without it; other Host headers
are refused without a token; bad query values are answered 400 with the reason and
the server keeps serving; hostile names are escaped; live messages arrive as
server-sent events; the journal is never written; no receiver secret shows anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from alert_servers import PASSWORD, TOKEN, free_port
from conftest import KEnv, RouterProcess, wait_for
from webtools import WebProcess, get

CONFIG = f"""
[alerts]
group_wait = "0s"
retry_initial = "200ms"
retry_max = "500ms"

[receivers.chat]
urls = ["mmost://127.0.0.1:{{port}}/{TOKEN}"]

[receivers.pager]
urls = ["json://ops:{PASSWORD}@127.0.0.1:{{port}}/hook"]

[[rule]]
id = "takeover"
kind = "INSTANCE"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["/bin/true"]
[[rule.action]]
type = "alert"
receivers = ["chat", "pager"]
"""


def _send(kenv: KEnv, host: str, name: str, state: str, prio: str = "100") -> str:
    return kenv.cli("send", "--host", host, "INSTANCE", name, state, prio).stdout.split()[1]


def _failover(kenv: KEnv) -> dict[str, str]:
    """node1 MASTER, stopped; node2 takes over. The event ids by step."""
    steps = [("b1", "node1", "BACKUP", "100"), ("b2", "node2", "BACKUP", "100"),
             ("m1", "node1", "MASTER", "100"), ("s1", "node1", "STOP", "0"),
             ("m2", "node2", "MASTER", "50")]
    return {step: _send(kenv, host, "VI_1", state, prio) for step, host, state, prio in steps}


def _alerts_failed(kenv: KEnv) -> bool:
    return any(a["message"] and a["message"]["attempts"] and
               a["message"]["attempts"][0]["status"] == "failed"
               for e in kenv.history() for a in e["alerts"])


@pytest.fixture
def served(kenv: KEnv, router: RouterProcess) -> Any:
    port = free_port()  # nothing listens: every alert attempt fails, with a reason
    kenv.write_config(CONFIG.replace("{port}", str(port)))
    router.start()
    ids = _failover(kenv)
    wait_for(lambda: _alerts_failed(kenv), 30, what="a failed alert attempt")
    web = WebProcess(kenv).wait_ready()
    try:
        yield kenv, web, ids
    finally:
        web.stop()


def test_pages_answer_with_the_failover(served: Any) -> None:
    _, web, ids = served
    overview = web.get("/")
    assert overview.status == 200 and 'data-cluster="VI_1"' in overview.body
    assert re.search(r'data-host="node2" data-state="MASTER"', overview.body)
    timeline = web.get("/timeline?cluster=VI_1&window=2m")
    assert timeline.status == 200
    for key in ("m1", "s1", "m2"):
        assert f'data-event-id="{ids[key]}"' in timeline.body
    assert 'class="mark alert failed"' in timeline.body
    assert 'class="mark action ok"' in timeline.body
    host = web.get("/timeline?host=node1&window=2m")
    assert host.status == 200 and f'data-event-id="{ids["s1"]}"' in host.body
    incident = web.get(f"/incident/{ids['m2']}")
    assert incident.status == 200
    for key in ("m1", "s1", "m2"):
        assert f'tr class="event-row" data-event-id="{ids[key]}"' in incident.body
    assert "connection refused" in incident.body  # what failed, in words
    history = web.get("/history?name=VI_*&transitions=1")
    rows = re.findall(r'class="event-row" data-event-id="(\w+)" data-class="(\w+)"', history.body)
    assert [i for i, _ in rows] == [ids[k] for k in ("m2", "s1", "m1", "b2", "b1")]
    assert {c for _, c in rows} == {"transition"}
    one = web.get(f"/history?id={ids['m1'][:12]}")
    assert re.findall(r'class="event-row" data-event-id="(\w+)"', one.body) == [ids["m1"]]
    for page in (overview, timeline, host, incident, history, one):
        assert PASSWORD not in page.body and TOKEN not in page.body
        assert "Content-Security-Policy" in page.headers


def test_bad_queries_are_refused_with_the_reason(served: Any) -> None:
    _, web, _ = served
    for path, word in [("/timeline?window=soon", "window"), ("/timeline?window=0s", "window"),
                       ("/timeline?since=yesterday", "not a time"),
                       ("/timeline?since=2026-01-02T00:00&until=2026-01-01T00:00", "after"),
                       ("/history?limit=-1", "limit"), ("/history?limit=x", "limit"),
                       ("/history?id=zz'", "letters, digits"),
                       ("/history?name=" + "x" * 300, "longer"),
                       ("/incident/" + "a" * 80, "1..64")]:
        answer = web.get(path)
        assert answer.status == 400 and word in answer.body, (path, answer.status,
                                                              answer.body[-300:])
    missing = web.get("/incident/" + "0" * 32)
    assert missing.status == 404 and "no event" in missing.body
    assert web.get("/nope").status == 404
    assert web.get("/").status == 200  # still serving


def test_hostile_names_are_escaped(kenv: KEnv, router: RouterProcess) -> None:
    router.start()
    evil = "<script>alert(1)</script>"
    kenv.cli("send", "--host", "h<b>x</b>", "INSTANCE", evil, "MASTER", "100")
    web = WebProcess(kenv).wait_ready()
    try:
        for path in ("/", "/history", f"/timeline?cluster={evil}", "/timeline?host=h<b>x</b>"):
            answer = web.get(path.replace("<", "%3C").replace(">", "%3E").replace("/s", "%2Fs"))
            assert answer.status == 200, path
            assert evil not in answer.body and "<b>x</b>" not in answer.body, path
            assert "&lt;script&gt;" in answer.body or "&lt;b&gt;" in answer.body, path
    finally:
        web.stop()


def test_a_token_is_required_when_set(kenv: KEnv, router: RouterProcess) -> None:
    router.start()
    _send(kenv, "node1", "VI_1", "MASTER")
    token_file = kenv.root / "web.token"
    token = "t0ken-" + "x" * 30
    token_file.write_text(f"# the web token\n{token}\n")
    token_file.chmod(0o600)
    web = WebProcess(kenv, "--token-file", str(token_file)).wait_ready()
    try:
        for path in ("/", "/timeline", "/history", "/incident/00", "/live", "/login"):
            answer = web.get(path)
            assert answer.status == 401, path
            assert "VI_1" not in answer.body and "node1" not in answer.body
        assert web.get("/", {"Authorization": "Bearer wrong-" + "x" * 20}).status == 401
        assert web.get("/", {"Authorization": f"Bearer {token}"}).status == 200
        basic = base64.b64encode(f"anyone:{token}".encode()).decode()
        assert web.get("/history", {"Authorization": f"Basic {basic}"}).status == 200
        # A browser logs in once; the cookie holds a digest, never the token.
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        conn.request("GET", f"/login?token={token}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 303
        cookie = resp.getheader("Set-Cookie") or ""
        assert token not in cookie and "HttpOnly" in cookie
        value = cookie.split(";")[0]
        assert web.get("/", {"Cookie": value}).status == 200
        assert web.get("/", {"Cookie": "knotify_web=" + hashlib.sha256(b"x").hexdigest()}
                       ).status == 401
        # Any Host is fine with a token: it is the token that protects.
        assert web.get("/", {"Authorization": f"Bearer {token}", "Host": "web.example"}
                       ).status == 200
        assert web.get("/healthz").status == 200
    finally:
        web.stop()


def test_users_file_and_unsafe_files(kenv: KEnv, router: RouterProcess) -> None:
    router.start()
    users = kenv.root / "web.users"
    users.write_text("alice:correct horse:battery\n")
    users.chmod(0o644)
    proc = kenv.cli("web", "--users-file", str(users), check=False)
    assert proc.returncode == 2 and "readable or writable by anyone" in proc.stderr
    users.chmod(0o600)
    web = WebProcess(kenv, "--users-file", str(users)).wait_ready()
    try:
        def auth(user: str, password: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(
                f"{user}:{password}".encode()).decode()}
        assert web.get("/").status == 401
        assert web.get("/").headers.get("WWW-Authenticate", "").startswith("Basic")
        assert web.get("/", auth("alice", "correct horse:battery")).status == 200
        assert web.get("/", auth("alice", "wrong")).status == 401
        assert web.get("/", auth("bob", "correct horse:battery")).status == 401
        assert web.get("/", {"Authorization": "Basic !!notbase64"}).status == 401
    finally:
        web.stop()
    short = kenv.root / "short.token"
    short.write_text("abc\n")
    short.chmod(0o600)
    proc = kenv.cli("web", "--token-file", str(short), check=False)
    assert proc.returncode == 2 and "shorter than 16" in proc.stderr


def test_loopback_only_without_a_token(kenv: KEnv, router: RouterProcess) -> None:
    router.start()
    web = WebProcess(kenv).wait_ready()
    try:
        assert web.get("/", {"Host": f"localhost:{web.port}"}).status == 200
        rebound = web.get("/", {"Host": "attacker.example"})
        assert rebound.status == 421 and "localhost" in rebound.body
    finally:
        web.stop()
    proc = kenv.cli("web", "--listen", "0.0.0.0:8650", check=False)
    assert proc.returncode == 2 and "--token-file" in proc.stderr
    proc = kenv.cli("web", "--listen", "nonsense", check=False)
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr


def test_live_events_arrive_as_server_sent_events(kenv: KEnv, router: RouterProcess) -> None:
    router.start()
    web = WebProcess(kenv).wait_ready()
    got: list[str] = []
    sock = socket.create_connection(("127.0.0.1", web.port), timeout=20)
    try:
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")

        def read() -> None:
            buf = b""
            while True:
                try:
                    chunk = sock.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                got.extend(ln for ln in buf.decode(errors="replace").splitlines()
                           if ln.startswith("data: "))
                buf = b""

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: json.loads(get(web.url + "/healthz").body)["live"]["pages"] == 1, 10,
                 what="the stream to be open")
        # The SUB socket subscribes when the page joins: send until one arrives (the
        # router's XPUB learns of the subscription asynchronously), then a marker.
        first = wait_for(lambda: _send(kenv, "node1", "VI_1", "MASTER") and [
            ln for ln in got if "node1" in ln], 20, interval=0.5, what="a live message")
        assert first
        marker = _send(kenv, "node9", "VI_9", "BACKUP")
        line = wait_for(lambda: [ln for ln in got if marker in ln], 10, what="the marker")[0]
        data = json.loads(line[len("data: "):])
        assert data["topic"] == "event" and data["host"] == "node9" and data["class"]
    finally:
        sock.close()
        web.stop()


def test_the_journal_is_only_read(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config("")
    # No journal yet: the pages say so, and the web creates nothing.
    web = WebProcess(kenv).wait_ready()
    try:
        answer = web.get("/")
        assert answer.status == 503 and "no journal" in answer.body
        assert not kenv.journal.exists()
        router.start()
        _send(kenv, "node1", "VI_1", "MASTER")
        router.stop()
        before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
                  for p in kenv.state.glob("journal.db*")}
        for path in ("/", "/timeline?window=1h", "/history", "/timeline?host=node1"):
            assert web.get(path).status == 200, path
        after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
                 for p in kenv.state.glob("journal.db*")}
        assert after["journal.db"] == before["journal.db"]
    finally:
        web.stop()


def test_report_is_one_file_without_secrets(served: Any) -> None:
    kenv, _, ids = served
    out = kenv.root / "postmortem.html"
    proc = kenv.cli("report", "--html", str(out), "--since", "1h", "--cluster", "VI_1")
    assert "wrote" in proc.stdout
    html = out.read_text()
    assert html.startswith("<!doctype html>")
    assert PASSWORD not in html and TOKEN not in html
    assert "<script src" not in html and "<link" not in html  # nothing outside the file
    for key in ("m1", "s1", "m2"):
        assert f'data-event-id="{ids[key]}"' in html
    assert 'href="#incident-' in html and 'id="incident-' in html
    everything = kenv.cli("report", "--html", "-", "--since", "2h").stdout
    assert 'data-host="node1"' in everything
    for args, word in [(["--since", "soon"], "--since"), (["--since", "1h", "--until", "2h"],
                                                           "further back")]:
        bad = kenv.cli("report", "--html", str(out), *args, check=False)
        assert bad.returncode == 2 and word in bad.stderr
    gone = kenv.cli("report", "--html", str(out), "--journal", str(kenv.root / "none.db"),
                    check=False)
    assert gone.returncode == 1 and "no journal" in gone.stderr


def test_unit_file_runs_web_on_loopback() -> None:
    unit = (Path(__file__).resolve().parent.parent / "config" / "knotify-web.service").read_text()
    start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert " web " in start and "--listen 127.0.0.1:" in start
    assert "ProtectSystem=strict" in unit and "ReadOnlyPaths=/var/lib/knotify" in unit
    assert os.path.basename(start.split()[0][len("ExecStart="):]) == "knotify"


def test_timeline_marks_within_their_time(served: Any) -> None:
    _, web, _ = served
    body = web.get("/timeline?cluster=VI_1&window=2m").body
    since = int(re.search(r'data-since-ns="(\d+)"', body).group(1))  # type: ignore[union-attr]
    until = int(re.search(r'data-until-ns="(\d+)"', body).group(1))  # type: ignore[union-attr]
    marks = [int(t) for t in re.findall(r'data-t-ns="(\d+)"', body)]
    assert marks and all(since <= t <= until + 10**9 for t in marks)
    assert until - since == pytest.approx(120e9, rel=0.01)
    assert time.time_ns() >= until
