"""Mass failover paging: 500 instances move between two hosts; how soon is every page out?

One run measures, against the same local HTTP receiver (a separate process that
takes ``json://`` POSTs and records when each arrived):

- **floor**: a plain Python loop of HTTP POSTs, a new connection each (``http.client``),
  one per instance: what sending the messages costs at the least;
- **apprise CLI**: ``apprise -t TITLE -b BODY json://...`` run once per message, as the
  usual notify-script glue does, ``--apprise-parallel`` at a time (keepalived forks its
  hooks concurrently); a sample of ``--apprise-sample`` messages, the time for all of
  them extrapolated from its rate (``--apprise-sample 0`` runs every one);
- **knotify, per instance** (``group_by = ["name"]``): a real router (``knotify run``),
  a rule paging on MASTER and FAULT (``from = "!INIT"``) to one json:// receiver. Every
  instance starts MASTER on lbA and BACKUP on lbB; then lbA reports FAULT and lbB
  MASTER for every instance, sent through knotify's own client (the hook's ZMTP
  transport, stamped as hooks stamp), all at once. Expected: one message per instance;
- **knotify, default grouping** (by incident): the same failover, expected exactly ONE
  message (one receiver) naming both hosts, with a folded list ("... and 488 more
  instances") and the right count.

Figures: the time from the first failover event sent to the last message received,
minus ``group_wait`` (the wait knotify adds on purpose), messages per second over
that time, and ratios to the floor and the apprise CLI. Every message is checked:
each instance named exactly once per run, nothing received twice (the receiver is
read again after the router reports its outbox empty).

Targets (issue 13): with per-instance grouping, all 500 delivered within
group_wait + 3 s; by default, exactly one message, delivered within group_wait + 1 s.

    .venv/bin/python bench/alerts.py [--instances 500] [--group-wait 2s]
        [--apprise-sample 40] [--apprise-parallel 2] [--python VENV/bin/python] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    BIN,
    BOOT_ID,
    KEnv,
    Router,
    cpu_seconds,
    load,
    machine,
    proc_status,
    revision,
    run_tag,
    send_pipelined,
    table,
    verdict,
)

from knotify import fastjson, keepalived

TARGET_S = 3.0
DEFAULT_TARGET_S = 1.0
HOSTS = ("lbA", "lbB")
#: [alerts] fold_after's default: instances listed line by line in one message.
FOLD = 12


# -- the receiver: a separate process recording every POST ---------------------------------


def serve_sink(port_out: Any, record: str) -> None:
    """A ThreadingHTTPServer answering 200 to every POST; one line per request in ``record``."""
    lock = threading.Lock()
    out = open(record, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            now = time.time()
            try:
                payload = json.loads(body)
                title = str(payload.get("title", ""))
                text = str(payload.get("message", ""))
            except ValueError:
                title, text = "?", ""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            with lock:
                out.write(json.dumps({"t": now, "path": self.path, "title": title,
                                      "text": text}) + "\n")

        def log_message(self, *args: Any) -> None:
            pass

    http.server.ThreadingHTTPServer.daemon_threads = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_out.put(server.server_address[1])
    server.serve_forever()


class Sink:
    def __init__(self, root: Path) -> None:
        self.record = root / "sink.jsonl"
        self.record.touch()
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        self.proc = ctx.Process(target=serve_sink, args=(queue, str(self.record)), daemon=True)
        self.proc.start()
        self.port = int(queue.get(timeout=30))

    def got(self, path: str) -> list[dict[str, Any]]:
        rows = []
        for line in self.record.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line being written
            if row["path"] == path:
                rows.append(row)
        return rows

    def wait(self, path: str, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.got(path)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join()


# -- baselines ------------------------------------------------------------------------------


def floor(sink: Sink, n: int) -> dict[str, Any]:
    """A plain loop of POSTs, a new connection each: the least sending can cost."""
    path = "/floor"
    t0 = time.time()
    for i in range(n):
        body = json.dumps({"version": "1.0", "title": f"[lbB] VI_{i} -> MASTER",
                           "message": f"lbB INSTANCE VI_{i}: BACKUP -> MASTER", "type": "success"})
        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=30)
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        conn.getresponse().read()
        conn.close()
    rows = sink.wait(path, n, 30)
    last = max(r["t"] for r in rows)
    return {"name": "floor: Python loop of HTTP POSTs", "messages": len(rows),
            "seconds": last - t0, "per_s": len(rows) / (last - t0)}


def apprise_cli(sink: Sink, n: int, sample: int, parallel: int, apprise: Path,
                env: dict[str, str]) -> dict[str, Any]:
    """``apprise`` once per message, ``parallel`` at a time; extrapolated from a sample."""
    path = "/apprise"
    todo = n if sample <= 0 else min(n, sample)
    url = f"json://127.0.0.1:{sink.port}{path}"
    t0 = time.time()
    running: list[subprocess.Popen[bytes]] = []
    failed = 0
    for i in range(todo):
        while len(running) >= parallel:
            for proc in list(running):
                if proc.poll() is not None:
                    failed += proc.returncode != 0
                    running.remove(proc)
            if len(running) >= parallel:
                time.sleep(0.002)
        running.append(subprocess.Popen(
            [str(apprise), "-t", f"[lbB] VI_{i} -> MASTER",
             "-b", f"lbB INSTANCE VI_{i}: BACKUP -> MASTER", url],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for proc in running:
        failed += proc.wait() != 0
    rows = sink.wait(path, todo, 30)
    last = max(r["t"] for r in rows) if rows else time.time()
    rate = len(rows) / (last - t0) if rows else 0.0
    return {"name": f"apprise CLI per message, {parallel} at a time", "messages": len(rows),
            "sampled": todo, "failed": failed, "seconds_sample": last - t0, "per_s": rate,
            "seconds": (n / rate) if rate else float("inf"), "extrapolated": todo < n}


# -- knotify ---------------------------------------------------------------------------------


def stamped(tag: str, host_index: int, seq: int, name: str, state: str, prio: int) -> bytes:
    """An event as ``knotify-notify`` sends it for ``INSTANCE name state prio``."""
    argv = ["INSTANCE", name, state, str(prio)]
    event: dict[str, object] = {
        "v": 1, "id": f"{tag}{host_index:02x}{seq:014x}", "host": HOSTS[host_index],
        "seq": seq, "ts_ns": time.time_ns(), "source": "hook",
        "mono_ns": time.clock_gettime_ns(time.CLOCK_BOOTTIME), "boot": BOOT_ID,
        "pid": 10_000 + seq,
    }
    event.update(keepalived.parse_argv(argv))
    event["argv"] = argv
    return fastjson.dumps({"v": 1, "op": "event", "event": event}).encode()


def knotify_run(sink: Sink, n: int, group_wait: str, group_by: list[str] | None,
                python: str, timeout: float, settings: str,
                profile: str = "", router_settings: str = "",
                py_spy: str = "") -> dict[str, Any]:
    path = "/by-name" if group_by else "/by-host"
    expected = n if group_by else 1
    kenv = KEnv(prefix="knba-")
    kenv.env["HOME"] = str(kenv.root)
    grouping = f"group_by = {json.dumps(group_by)}\n" if group_by else ""
    kenv.write_config(f"""
[alerts]
group_wait = "{group_wait}"
{grouping}{settings}
[receivers.chat]
urls = ["json://127.0.0.1:{sink.port}{path}"]

[[rule]]
id = "page"
kind = "INSTANCE"
state = ["MASTER", "FAULT"]
from = "!INIT"

[[rule.action]]
type = "alert"
receivers = ["chat"]
""", router=router_settings)
    wrap = ["-m", "cProfile", "-o", profile] if profile else []
    router = Router(kenv, python=python, log_level="warning", wrap=wrap)
    try:
        tag = run_tag()
        setup = [stamped(tag, 0, i + 1, f"VI_{i}", "MASTER", 100) for i in range(n)]
        setup += [stamped(tag, 1, i + 1, f"VI_{i}", "BACKUP", 50) for i in range(n)]
        sent = send_pipelined(kenv.endpoint, setup, window=64)
        assert sent["acked"] == len(setup), sent
        time.sleep(0.5)  # past the boot-clock tick of the set-up events
        failover = []
        for i in range(n):
            failover.append(stamped(tag, 0, n + i + 1, f"VI_{i}", "FAULT", 0))
            failover.append(stamped(tag, 1, n + i + 1, f"VI_{i}", "MASTER", 150))
        spy = None
        if py_spy:
            spy = subprocess.Popen(
                [py_spy, "record", "--format", "raw", "--rate", "200", "--nonblocking",
                 "--subprocesses", "--output", str(kenv.root / "spy.txt"),
                 "--pid", str(router.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        cpu0 = cpu_seconds(router.pid)
        t0 = time.time()
        sent = send_pipelined(kenv.endpoint, failover, window=64)
        t_sent = time.time()
        assert sent["acked"] == len(failover), sent
        rows = sink.wait(path, expected, timeout)
        t_done = time.time()
        cpu1 = cpu_seconds(router.pid)
        workers = router.request("stats")["router"].get("alerts", {}).get("workers", {})
        worker_cpu = 0.0
        rss: list[dict[str, int]] = []
        for pid in workers.get("pids", []):
            try:
                worker_cpu += cpu_seconds(pid)
                rss.append(proc_status(pid))  # idle now, after their share of the run
            except OSError:
                pass
        spied = ""
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            from intake import spy_summary

            spied = spy_summary((kenv.root / "spy.txt").read_text(), 40)
        # Nothing more may come: wait until the outbox is empty, then read again.
        deadline = time.monotonic() + 60
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = router.request("stats", timeout=30)["router"].get("alerts", {})
            if not info.get("messages_pending") and not info.get("messages_sending") \
                    and not info.get("items_waiting"):
                break
            time.sleep(0.1)
        rows = sink.got(path)
    finally:
        router.stop()
        kenv.cleanup()
    named: Counter[str] = Counter()
    for row in rows:
        for i in range(n):
            # the title names the instance(s); one per-instance message names one
            if f"VI_{i}:" in row["text"] or f"VI_{i} " in row["title"] + " ":
                named[f"VI_{i}"] += 1
    last = max((r["t"] for r in rows), default=t_done)
    gw = parse_s(group_wait)
    span = last - t0 - gw
    if group_by:
        missing = [f"VI_{i}" for i in range(n) if named[f"VI_{i}"] == 0]
        twice = sorted(k for k, c in named.items() if c > 1)
        shape = ""
    else:
        # one message for the whole incident: both hosts, the count, a folded list
        title = f"[{', '.join(HOSTS)}] {n} instances: "
        folded = f"... and {n - FOLD} more instances ({2 * (n - FOLD)} changes)"
        good = [r for r in rows if r["title"].startswith(title) and folded in r["text"]
                and f"({n})" in r["title"]]
        missing = [] if good else ["the incident message"]
        twice = [r["title"] for r in rows[1:]]
        shape = rows[0]["title"] if rows else ""
    return {
        "name": "knotify, group_by = [\"name\"]" if group_by else "knotify, default grouping "
                "(by incident)", "title": shape,
        "messages": len(rows), "expected": expected, "events": len(failover),
        "send_s": t_sent - t0, "seconds": span, "first_s": min(r["t"] for r in rows) - t0
        if rows else None, "per_s": len(rows) / span if span > 0 else 0.0,
        "router_cpu_s": cpu1 - cpu0, "worker_cpu_s": worker_cpu,
        "workers": len(workers.get("pids", [])), "worker_rss_kib": rss,
        "commits": info.get("commits"), "py_spy": spied,
        "missing": len(missing),
        "twice": len(twice),
        "alerts": info,
    }


def parse_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--group-wait", default="2s")
    parser.add_argument("--apprise-sample", type=int, default=40,
                        help="apprise CLI runs measured (0: one per instance)")
    parser.add_argument("--apprise-parallel", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for a knotify run's messages")
    parser.add_argument("--skip-default", action="store_true",
                        help="skip the default (by host) grouping run")
    parser.add_argument("--settings", default="",
                        help="extra [alerts] lines, e.g. 'max_parallel = 8'")
    parser.add_argument("--router", default="",
                        help="extra [router] lines, e.g. 'synchronous = \"normal\"'")
    parser.add_argument("--python", default=sys.executable, metavar="VENV/bin/python",
                        help="the knotify install whose router is measured")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the per-instance run's router into FILE")
    parser.add_argument("--py-spy", metavar="PATH", nargs="?", const="py-spy", default="",
                        help="sample the router and its workers with py-spy during the "
                        "per-instance run and print the hotspots")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.py_spy:
        import shutil

        found = shutil.which(args.py_spy) or shutil.which(args.py_spy, path=str(BIN))
        if not found:
            raise SystemExit(f"{args.py_spy} not found: .venv/bin/pip install py-spy")
        args.py_spy = found
    n = args.instances
    load_before = load()
    root = KEnv(prefix="knbs-").root
    sink = Sink(root)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    apprise = Path(args.python).parent / "apprise"
    if not apprise.exists():
        apprise = BIN / "apprise"
    env = dict(os.environ, HOME=str(root))
    try:
        say("floor: plain HTTP POSTs ...")
        base = floor(sink, n)
        say("apprise CLI ...")
        cli = apprise_cli(sink, n, args.apprise_sample, args.apprise_parallel, apprise, env)
        say("knotify, per-instance grouping ...")
        runs = [knotify_run(sink, n, args.group_wait, ["name"], args.python, args.timeout,
                            args.settings, args.profile or "", args.router, args.py_spy)]
        if not args.skip_default:
            say("knotify, default grouping ...")
            runs.append(knotify_run(sink, n, args.group_wait, None, args.python, args.timeout,
                                    args.settings, router_settings=args.router))
    finally:
        sink.stop()
    per_name = runs[0]
    met = (per_name["messages"] == n and not per_name["missing"] and not per_name["twice"]
           and per_name["seconds"] <= TARGET_S)
    default = runs[1] if len(runs) > 1 else None
    default_met = default is not None and (
        default["messages"] == 1 and not default["missing"] and not default["twice"]
        and default["seconds"] <= DEFAULT_TARGET_S)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
        "revision": revision(), "python": args.python, "load_before": load_before,
        "load_after": load(), "instances": n, "group_wait": args.group_wait,
        "floor": base, "apprise_cli": cli, "knotify": runs, "target_s": TARGET_S,
        "target_met": met, "default_target_s": DEFAULT_TARGET_S,
        "default_target_met": default_met,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = []
    for r in (base, cli, *runs):
        secs = r["seconds"]
        rows.append([
            r["name"], f"{r['messages']}" + (f"/{r['sampled']}" if "sampled" in r else ""),
            f"{secs:.2f}s" + (" (extrapolated)" if r.get("extrapolated") else ""),
            f"{r['per_s']:.0f}/s" if r["per_s"] >= 10 else f"{r['per_s']:.1f}/s",
            f"{secs / base['seconds']:.1f}x", f"{secs / cli['seconds']:.3f}x",
        ])
    print(f"{machine()}\nrevision {results['revision']}, python {args.python}\n"
          f"load {load_before} -> {results['load_after']}; {n} instances, "
          f"group_wait {args.group_wait}\n")
    print(table(["variant", "messages", "time", "rate", "x floor", "x apprise"], rows))
    print("\nknotify time = first failover event sent .. last message received, minus "
          "group_wait")
    for r in runs:
        print(f"{r['name']}: {r['messages']} messages (expected {r['expected']}), "
              f"{r['events']} events sent in {r['send_s']:.2f}s, first message "
              f"{r['first_s']:.2f}s after the first event, router CPU {r['router_cpu_s']:.2f}s, "
              f"{r['workers']} workers' CPU {r['worker_cpu_s']:.2f}s (since they started), "
              f"missing {r['missing']}, twice {r['twice']}")
        if r["commits"]:
            print(f"  alert engine commits: {r['commits']} for {r['messages']} messages and "
                  f"{r['events']} alerts queued")
        for st in r["worker_rss_kib"]:
            print(f"  idle worker: RSS {st.get('VmRSS', 0) / 1024:.1f} MiB (own "
                  f"{st.get('RssAnon', 0) / 1024:.1f} MiB, files "
                  f"{st.get('RssFile', 0) / 1024:.1f} MiB)")
    for r in runs:
        if r.get("py_spy"):
            print(f"\n== py-spy, router and workers ({r['name']}) ==\n{r['py_spy']}")
    print(f"\ntarget: per-instance grouping, all {n} within group_wait + {TARGET_S:g}s: "
          f"{per_name['seconds']:.2f}s -> {verdict(met)}")
    if default is not None:
        print(f"target: default grouping, exactly one message within group_wait + "
              f"{DEFAULT_TARGET_S:g}s: {default['messages']} message(s), "
              f"{default['seconds']:.2f}s -> {verdict(default_met)}\n  title: "
              f"{default['title']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
