"""Warm sender workers: the pool, its bounds, "slow down", and crashes in mass deliveries.

Everything is real: worker processes importing apprise, a local HTTP server and
aiosmtpd receiving, router processes killed with SIGKILL. Nothing asserts how long
something took, only what happened and in which order, from the receivers' own
clocks and the journal: lower bounds (never sooner than allowed) hold on a loaded
machine, and nothing here waits on an upper bound but ``wait_for``'s generous ones.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from alert_servers import (
    FAST_ALERTS,
    FAST_BY_HOST,
    HttpSink,
    SmtpSink,
    alert_items,
    free_port,
    settled,
)
from conftest import ROOT, KEnv, RouterProcess, wait_for

from knotify import client, spool
from knotify.alerts import attempt, record, sender
from knotify.alerts.pool import WorkerPool
from knotify.errors import ConfigError
from knotify.stamp import stamp
from knotify.vocab import FAILED, INTERRUPTED, OK, SENT, TIMEOUT


class Log:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.records.append((event, kw))

    debug = info = warning = error = _add


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def job(url: str, title: str = "t", timeout: float = 10.0, **extra: Any) -> dict[str, Any]:
    return {"urls": [url], "timeout": timeout, "title": title, "body": "b", "type": "info",
            **extra}


def result_file(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.touch(mode=0o600)
    return str(path)


# -- the worker process on its own ------------------------------------------------------------


def test_worker_takes_job_after_job_then_exits_when_stdin_closes(
    tmp_path: Path, http: HttpSink
) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "knotify.alerts.worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert json.loads(proc.stdout.readline()) == {"ready": proc.pid}
        for i in range(3):
            path = result_file(tmp_path, f"r{i}.jsonl")
            proc.stdin.write(json.dumps({"id": i, "result": path,
                                         "job": job(http.url(f"/j{i}"), f"n{i}")}) + "\n")
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline()) == {"id": i}
            res = attempt.read_results(path)
            assert res.pid == proc.pid and res.ended
            assert attempt.verdict(res, [], False).status == OK
        # Junk in, an answer out, and the worker goes on.
        proc.stdin.write("{not json\n")
        proc.stdin.flush()
        assert "not JSON" in json.loads(proc.stdout.readline())["error"]
        gone = str(tmp_path / "removed.jsonl")  # the router gave up on it: never created
        proc.stdin.write(json.dumps({"id": 9, "result": gone, "job": job(http.url("/x"))})
                         + "\n")
        proc.stdin.flush()
        assert "cannot open the result file" in json.loads(proc.stdout.readline())["error"]
        assert not os.path.exists(gone)
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
    assert [r.json["title"] for r in http.got()] == ["n0", "n1", "n2"]
    assert not http.got("/x")


FAKE_ROUTER = """
import json, subprocess, sys
path, url = sys.argv[1], sys.argv[2]
worker = subprocess.Popen([sys.executable, "-m", "knotify.alerts.worker"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/")
job = {"id": 1, "result": path, "job": {"urls": [url], "timeout": 10, "title": "late"}}
worker.stdin.write((json.dumps(job) + "\\n").encode())
worker.stdin.flush()
print(worker.pid, flush=True)
# Dies at once, before the worker (still importing apprise) has read the job.
"""


def test_a_job_read_after_its_router_died_is_dropped_unsent(tmp_path: Path,
                                                            http: HttpSink) -> None:
    path = result_file(tmp_path, "late.jsonl")
    script = tmp_path / "router.py"
    script.write_text(FAKE_ROUTER)
    out = subprocess.run([sys.executable, str(script), path, http.url("/late")],
                         capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.split()[0])
    wait_for(lambda: not alive(pid), 60, what="the orphaned worker to exit")
    assert not http.started, "a job of a dead router must not be sent"
    res = attempt.read_results(path)
    assert res.planned is None and not attempt.locked(path)
    # The next router sees an attempt that never began: sent again by itself, at once.
    v = attempt.verdict(res, [], False, interrupted=True)
    assert v.status == INTERRUPTED and v.done == []


# -- the pool, in-process, with real workers ------------------------------------------------


def test_pool_kills_an_overrunning_worker_with_its_group_and_the_next_job_goes_on(
    tmp_path: Path, http: HttpSink
) -> None:
    http.behaviour["/hang"] = "sleep:60"

    async def main() -> None:
        pool = WorkerPool(lambda: 1, lambda: 60.0, Log())
        try:
            worker = await pool.acquire()
            first = worker.pid
            path = result_file(tmp_path, "hang.jsonl")
            # apprise is given 30 s; the pool's bound (1 s + 0.5 s grace) comes first.
            timed_out, note = await worker.call(
                {"result": path, "job": job(http.url("/hang"), timeout=30.0)}, 1.0, grace=0.5)
            pool.release(worker)
            assert timed_out and f"worker process group {first} killed" in note
            with pytest.raises(ProcessLookupError):
                os.killpg(first, 0)
            res = attempt.read_results(path)
            assert res.sending is not None  # cut in the middle of its request
            assert attempt.verdict(res, [], True).status == TIMEOUT
            # The pool (size 1) is free again: a new worker takes the next job.
            worker = await pool.acquire()
            assert worker.pid != first
            path = result_file(tmp_path, "ok.jsonl")
            assert await worker.call({"result": path, "job": job(http.url("/ok"))}, 10.0) \
                == (False, "")
            pool.release(worker)
            assert pool.counts.get("killed") == 1 and pool.counts.get("started") == 2
        finally:
            await pool.close()

    asyncio.run(main())
    assert len(http.got("/ok")) == 1


def test_pool_never_runs_more_workers_than_its_size_and_serves_waiters_in_turn(
    tmp_path: Path, http: HttpSink
) -> None:
    http.behaviour["/slow"] = "sleep:0.3"
    seen: set[int] = set()
    most = 0

    async def main() -> None:
        nonlocal most
        pool = WorkerPool(lambda: 2, lambda: 60.0, Log())

        async def one(i: int) -> None:
            nonlocal most
            worker = await pool.acquire()
            most = max(most, len(pool.workers) + pool.starting)
            seen.add(worker.pid)
            try:
                path = result_file(tmp_path, f"s{i}.jsonl")
                assert await worker.call(
                    {"result": path, "job": job(http.url(f"/slow/{i}"), f"m{i}")}, 20.0) \
                    == (False, "")
            finally:
                pool.release(worker)

        try:
            await asyncio.gather(*(one(i) for i in range(6)))
            assert pool.info()["workers"] == 2
        finally:
            await pool.close()

    asyncio.run(main())
    assert most <= 2 and len(seen) == 2
    assert sorted(r.json["title"] for r in http.got()) == [f"m{i}" for i in range(6)]


def test_idle_workers_exit_after_worker_idle_and_come_back_on_demand(
    tmp_path: Path, http: HttpSink
) -> None:
    async def main() -> None:
        pool = WorkerPool(lambda: 2, lambda: 0.3, Log())
        try:
            pool.warm(2)
            await asyncio.sleep(0)
            assert pool.starting == 2
            while pool.starting or not pool.idle:
                await asyncio.sleep(0.05)
            pids = {w.pid for w in pool.workers}
            while pool.workers:  # they idle out: nothing left running
                await asyncio.sleep(0.05)
            for pid in pids:
                while alive(pid):
                    await asyncio.sleep(0.05)
            assert pool.counts.get("idled_out", 0) >= 1
            worker = await pool.acquire()
            assert worker.pid not in pids
            path = result_file(tmp_path, "again.jsonl")
            assert await worker.call({"result": path, "job": job(http.url("/again"))}, 10.0) \
                == (False, "")
            pool.release(worker)
        finally:
            await pool.close()

    asyncio.run(main())
    assert len(http.got("/again")) == 1


# -- "slow down": parsing what the service said -------------------------------------------


def test_retry_after_is_read_as_seconds_or_an_http_date_and_junk_is_ignored() -> None:
    assert record.parse_retry_after("120") == 120.0
    assert record.parse_retry_after(" 0 ") == 0.0
    now = 1_700_000_000.0
    assert record.parse_retry_after("Tue, 14 Nov 2023 22:13:27 GMT", now) == 7.0
    assert record.parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # past
    assert record.parse_retry_after("99999999999") == record.MAX_RETRY_AFTER
    for junk in (None, "", "-5", "1.5", "soon", "Tue, 99 Nov 2023"):
        assert record.parse_retry_after(junk) is None
    assert sender.slow_down([(200, None)]) == {}
    assert sender.slow_down([(429, "30")]) == {"http": 429, "retry_after": 30.0}
    assert sender.slow_down([(429, None)]) == {"http": 429}
    assert sender.slow_down([(503, "5")]) == {"http": 503, "retry_after": 5.0}
    assert sender.slow_down([(500, "5")]) == {"http": 500}


def test_verdict_says_slow_down_and_the_longest_retry_after() -> None:
    res = attempt.parse_results("\n".join(json.dumps(r) for r in [
        {"t": "start", "pid": 1},
        {"t": "plan", "urls": [{"id": "a", "url": "json://a"}, {"id": "b", "url": "json://b"},
                               {"id": "c", "url": "json://c"}], "problems": []},
        {"t": "url", "id": "a", "ok": False, "status": "FAILURE", "http": 429,
         "retry_after": 3.0},
        {"t": "url", "id": "b", "ok": False, "status": "FAILURE", "http": 503,
         "retry_after": 7.5},
        {"t": "url", "id": "c", "ok": True, "status": "SUCCESS"},
        {"t": "end"}]))
    v = attempt.verdict(res, [], False)
    assert v.status == FAILED and v.slow_down and v.retry_after == 7.5
    assert v.done == ["c"]
    plain = attempt.parse_results("\n".join(json.dumps(r) for r in [
        {"t": "plan", "urls": [{"id": "a", "url": "json://a"}], "problems": []},
        {"t": "url", "id": "a", "ok": False, "status": "FAILURE", "http": 500}]))
    assert not attempt.verdict(plain, [], False).slow_down


# -- settings ---------------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> Any:
    from knotify import config as configmod

    path = tmp_path / "knotify.toml"
    path.write_text(text)
    return configmod.parse(text, str(path))


def test_pool_settings_load_with_safe_defaults_and_errors_name_the_key(tmp_path: Path) -> None:
    defaults = load(tmp_path, "").alerts
    assert (defaults.max_parallel, defaults.max_parallel_per_receiver,
            defaults.worker_idle) == (4, 2, 60.0)
    one = load(tmp_path, "[alerts]\nmax_parallel = 1\n").alerts
    assert one.max_parallel_per_receiver == 1  # the default never exceeds the pool
    set_ = load(tmp_path, '[alerts]\nmax_parallel = 8\nmax_parallel_per_receiver = 3\n'
                'worker_idle = "5m"\n').alerts
    assert (set_.max_parallel, set_.max_parallel_per_receiver, set_.worker_idle) == (8, 3, 300)
    for text, key, what in [
        ("max_parallel = 2\nmax_parallel_per_receiver = 3", "max_parallel_per_receiver",
         "at most max_parallel (2), found 3"),
        ("max_parallel_per_receiver = 0", "max_parallel_per_receiver", "expected 1..64"),
        ("max_parallel = 65", "max_parallel", "expected 1..64"),
        ('worker_idle = "soon"', "worker_idle", "soon"),
        ("worker_idle = true", "worker_idle", ""),
    ]:
        with pytest.raises(ConfigError) as info:
            load(tmp_path, "[alerts]\n" + text + "\n")
        assert f"alerts.{key}" in str(info.value) and what in str(info.value), str(info.value)


# -- the router with real receivers -----------------------------------------------------------


def send_events(kenv: KEnv, events: list[tuple[str, str, str, int]]) -> None:
    """Send (host, name, state, prio) events the way the hook does, one request each."""
    settings = client.load_settings(str(kenv.config))
    settings.ack_timeout = 10.0  # a busy machine: wait for the ack rather than spool
    for host, name, state, prio in events:
        settings.host = host
        fields = {"kind": "INSTANCE", "name": name, "vs": "", "state": state, "prio": prio,
                  "form": "send"}
        event = stamp(fields, "send", host, spool.next_seq(settings.spool_dir),
                      time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        assert client.deliver(event, settings) == "acked"


def write(kenv: KEnv, receivers: str, alerts: str = FAST_BY_HOST,
          to: str = '["chat"]', extra: str = "") -> None:
    kenv.write_config(alerts + extra + receivers + f"""
[[rule]]
id = "page"
kind = "INSTANCE"
[[rule.action]]
type = "alert"
receivers = {to}
""")


def workers_of(kenv: KEnv) -> dict[str, Any]:
    out = json.loads(kenv.cli("status", "--json").stdout)
    return dict(out["router"]["alerts"]["workers"])


def attempts(history: list[dict[str, Any]], receiver: str) -> list[dict[str, Any]]:
    """Every attempt of ``receiver``'s messages, with the message's title."""
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for item in alert_items(history):
        msg = item.get("message")
        while msg is not None:
            if msg["receiver"] == receiver:
                for a in msg["attempts"]:
                    found[(msg["id"], a["attempt"])] = {**a, "title": msg["title"]}
            msg = msg.get("escalation")
    return sorted(found.values(), key=lambda a: a["started_ns"])


def wait_settled(kenv: KEnv, timeout: float = 60) -> list[dict[str, Any]]:
    return list(wait_for(lambda: (h := kenv.history()) and settled(h) and h, timeout,
                         interval=0.2, what="every alert to be delivered or given up"))


def test_hanging_receiver_is_cut_at_its_timeout_while_other_receivers_keep_flowing(
    kenv: KEnv, router: RouterProcess, http: HttpSink, smtp: SmtpSink
) -> None:
    http.behaviour["/hang"] = "sleep:120"
    write(kenv, f"""
[receivers.hang]
urls = ["{http.url('/hang')}?rto=120"]  # apprise's own read timeout is 4 s otherwise
timeout = "15s"

[receivers.chat]
urls = ["{http.url('/chat')}"]

[receivers.mail]
urls = ["{smtp.url()}"]
""", to='["hang", "chat", "mail"]')
    router.start()
    send_events(kenv, [("h1", "VI_1", "MASTER", 100)])
    wait_for(lambda: any(r.path == "/hang" for r in http.started), 60,
             what="the first message to hang in its receiver")
    # While it hangs, more changes for the other receivers go out.
    send_events(kenv, [(f"h{i}", "VI_1", "MASTER", 100) for i in range(2, 5)])
    wait_for(lambda: len(http.got("/chat")) == 4 and len(smtp.mails) == 4, 120,
             what="every chat and mail message")
    history = wait_for(lambda: (h := kenv.history()) and any(
        a["status"] == "timeout" for a in attempts(h, "hang")) and h, 120,
        what="the hanging attempt to be cut")
    [cut, *_] = attempts(history, "hang")
    assert cut["status"] == "timeout" and cut["urls"][0]["status"] in ("TIMEOUT", "UNKNOWN")
    # Cut at its timeout, not before ...
    assert cut["ended_ns"] - cut["started_ns"] >= 15e9
    # ... its worker, whose apprise thread may still hang, is not used again ...
    [started] = [r for r in router.records() if r.get("event") == "alert.attempt"
                 and r["receiver"] == "hang" and r["message"] == cut_message(history)]
    wait_for(lambda: not alive(started["worker"]), 30, what="the hanging worker to go")
    # ... and meanwhile the other receivers' messages were delivered, every one of them.
    for name in ("chat", "mail"):
        done = [a for a in attempts(history, name) if a["status"] == "ok"]
        assert len(done) == 4
        assert all(a["ended_ns"] < cut["ended_ns"] for a in done), name
    assert not http.got("/hang")


def cut_message(history: list[dict[str, Any]]) -> int:
    return int(min(i["message"]["id"] for i in alert_items(history)
                   if i.get("message") and i["message"]["receiver"] == "hang"))


def test_429_with_retry_after_holds_the_receiver_until_then(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/chat"] = "429:3:1"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/chat')}"]
""")
    router.start()
    send_events(kenv, [("s1", "VI_1", "MASTER", 100)])
    wait_for(lambda: http.refused, 60, what="the first message to be told to slow down")
    send_events(kenv, [(f"s{i}", "VI_1", "MASTER", 100) for i in range(2, 5)])
    wait_for(lambda: len(http.got("/chat")) == 4, 120, what="all four messages")
    history = wait_settled(kenv)
    [slow] = http.refused
    # The receiver's own clock: the retry came no sooner than Retry-After said (retry_initial
    # is 200 ms here, so the usual backoff alone would have retried long before).
    [again] = [r for r in http.got("/chat") if r.json["title"] == slow.json["title"]]
    assert again.t_start - slow.t_end >= 3.0
    # The journal: no attempt of that receiver began while it was held.
    tried = attempts(history, "chat")
    [refused] = [a for a in tried if a["status"] == "failed"]
    assert "429" in refused["error"]
    later = [a for a in tried if a["started_ns"] > refused["ended_ns"]]
    assert later and all(a["started_ns"] >= refused["ended_ns"] + 3e9 for a in later)
    [record] = [r for r in router.records() if r.get("event") == "alert.slow_down"]
    assert record["retry_after"] == 3.0 and record["receiver"] == "chat"


def test_429_without_retry_after_backs_off_the_receiver_not_a_storm(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/chat"] = "429::3"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/chat')}"]
""", alerts=FAST_BY_HOST.replace('retry_initial = "200ms"', 'retry_initial = "1s"')
        .replace('retry_max = "800ms"', 'retry_max = "4s"'))
    router.start()
    send_events(kenv, [(f"b{i}", "VI_1", "MASTER", 100) for i in range(3)])
    wait_for(lambda: len(http.got("/chat")) == 3, 120, what="all three messages")
    history = wait_settled(kenv)
    # Not a storm: three "slow down" answers, then each message once.
    assert len(http.refused) == 3 and len(http.started) == 6
    # After each "slow down", nothing of the receiver began before its backoff was over
    # (retry_initial 1 s, doubling): the journal's own clock, start and end alike.
    tried = attempts(history, "chat")
    refused = [a for a in tried if a["status"] == "failed"]
    assert len(refused) == 3 and all("429" in a["error"] for a in refused)
    for a in refused:
        hold = min(4.0, 2.0 ** (a["attempt"] - 1)) * 1e9
        later = [b for b in tried if b["started_ns"] > a["ended_ns"]]
        assert all(b["started_ns"] >= a["ended_ns"] + hold for b in later), (a, later)
    assert [r.get("retry_after") for r in router.records()
            if r.get("event") == "alert.slow_down"] == [None, None, None]


def test_an_attempt_cut_at_its_timeout_never_resends_the_urls_it_reached(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/slow"] = "sleep:30"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/fast')}", "{http.url('/slow')}"]
timeout = "2s"
""")
    router.start()
    send_events(kenv, [("k1", "VI_1", "MASTER", 100)])
    history = wait_for(lambda: (h := kenv.history()) and len(attempts(h, "chat")) >= 2 and h,
                       60, what="a killed attempt and a retry")
    http.behaviour["/slow"] = "ok"
    history = wait_settled(kenv)
    tried = attempts(history, "chat")
    assert tried[0]["status"] == "timeout"
    assert [u["ok"] for u in tried[0]["urls"]] == [True, False]
    assert tried[-1]["status"] == "ok"
    assert all(len(a["urls"]) == 1 for a in tried[1:])  # /fast is never tried again
    assert len(http.got("/fast")) == 1
    assert len(http.got("/slow")) >= 1


def test_router_sigkill_idle_workers_exit_busy_one_finishes_and_is_read_after_restart(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    http.behaviour["/chat/slow"] = "sleep:3"
    port = free_port()
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/chat/a')}", "{http.url('/chat/slow')}", "{http.url('/chat/b')}"]
timeout = "30s"
""", extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    router.start()
    send_events(kenv, [("w1", "VI_1", "MASTER", 100)])
    wait_for(lambda: [r for r in http.started if r.path == "/chat/slow"], 60,
             what="a worker to be in the middle of a slow request")
    pids = workers_of(kenv)["pids"]
    assert pids
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode().splitlines()
    assert f"knotify_alert_workers {float(len(pids))}" in metrics
    router.kill()
    # Idle workers read EOF and exit; the busy one finishes its job first, then exits.
    for pid in pids:
        def gone(pid: int = pid) -> bool:
            return not alive(pid)

        wait_for(gone, 60, what=f"worker {pid} to exit")
    assert [len(http.got(p)) for p in ("/chat/a", "/chat/slow", "/chat/b")] == [1, 1, 1]
    router.start()
    history = wait_settled(kenv)
    [item] = alert_items(history)
    assert item["message"]["status"] == "sent"
    assert [len(http.got(p)) for p in ("/chat/a", "/chat/slow", "/chat/b")] == [1, 1, 1]


@pytest.mark.slow
def test_router_sigkill_in_a_mass_delivery_every_message_arrives_exactly_once(
    kenv: KEnv, router: RouterProcess, http: HttpSink
) -> None:
    count = 300
    http.behaviour["/mass"] = "sleep:0.1"
    write(kenv, f"""
[receivers.chat]
urls = ["{http.url('/mass')}"]
""", alerts=FAST_ALERTS + 'group_by = ["name"]\nmax_parallel = 4\n'
        'max_parallel_per_receiver = 4\n')
    router.start()
    send_events(kenv, [("m1", f"VI_{i}", "MASTER", 100) for i in range(count)])
    wait_for(lambda: len(http.got("/mass")) >= count // 4, 300, interval=0.01,
             what="a quarter of the messages")
    router.kill()
    got_at_kill = len(http.got("/mass"))
    router.start()
    wait_for(lambda: len(http.got("/mass")) >= count, 600, interval=0.2,
             what="every message after the restart")
    wait_settled(kenv, 300)
    # A positive marker: one more message, sent after everything settled, arrives last.
    send_events(kenv, [("m2", "VI_marker", "MASTER", 100)])
    wait_for(lambda: any(r.json["title"].startswith("[m2]") for r in http.got("/mass")), 120,
             what="the marker message")
    titles = collections.Counter(r.json["title"] for r in http.got("/mass"))
    assert len(titles) == count + 1
    assert max(titles.values()) == 1, [t for t, n in titles.items() if n > 1]
    assert got_at_kill < count, "the kill came after the end: nothing was tested"


def test_worker_module_keeps_apprise_out_of_the_router() -> None:
    code = textwrap.dedent("""
        import sys
        import knotify.router, knotify.alerts.engine, knotify.alerts.pool
        print("apprise" in sys.modules, "requests" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]



# -- the outbox: which messages may go, and an older journal ------------------------------


def test_windows_offer_each_groups_oldest_message_up_to_the_limit(tmp_path: Path) -> None:
    from knotify.store.db import Database
    from knotify.store.events import EventStore
    from knotify.store.outbox import Outbox

    journal = EventStore(Database(str(tmp_path / "j.db")))
    box = Outbox(journal.database)
    with journal.transaction():
        ids = {}
        for name, receiver, group in [("a1", "chat", "A"), ("a2", "chat", "A"),
                                      ("b1", "chat", "B"), ("c1", "chat", "C"),
                                      ("m1", "mail", "A"), ("n1", "mail", None)]:
            ids[name] = box.add_message(receiver, "firing", name, "body", "info", [], 1,
                                        group_key=group)
    titles = {r: [m.title for m in ms] for r, ms in box.windows(lambda r: 2).items()}
    assert titles == {"chat": ["a1", "b1"], "mail": ["m1", "n1"]}  # a2 waits behind a1
    assert list(box.windows(lambda r: 2)) == ["chat", "mail"]  # oldest head first
    titles = {r: [m.title for m in ms] for r, ms in box.windows(lambda r: 9).items()}
    assert titles["chat"] == ["a1", "b1", "c1"]
    with journal.transaction():
        box.update_message(ids["a1"], status=SENT)
    assert [m.title for m in box.windows(lambda r: 9)["chat"]] == ["a2", "b1", "c1"]
    journal.database.close()


def test_an_older_journal_gets_the_group_key_of_its_open_messages(tmp_path: Path) -> None:
    import sqlite3

    from knotify.store.db import Database
    from knotify.store.events import EventStore
    from knotify.store.outbox import Outbox

    path = str(tmp_path / "old.db")
    journal = EventStore(Database(path))
    box = Outbox(journal.database)
    with journal.transaction():
        message = box.add_message("chat", "firing", "t", "b", "info", ["e1"], 1)
        box.add_item(run=None, event_id="e1", receiver="chat", stream="s", alert="firing",
                     status="composed", detail=None, group_key='["chat","h1"]', fields={},
                     spec={}, created_ns=1, due_ns=1)
        journal.db.execute("UPDATE alert_items SET message = ?", (message,))
    journal.database.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE alert_messages DROP COLUMN group_key")  # as knotify wrote it before
    db.commit()
    db.close()
    journal = EventStore(Database(path))
    [window] = Outbox(journal.database).windows(lambda r: 2).values()
    assert window[0].group_key == '["chat","h1"]'
    journal.database.close()
