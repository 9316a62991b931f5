"""Web pages under a 10,000-event journal: each page's answer time against a trivial route.

A router journals 10,000 events (default) sent through knotify's own client: 2 hosts
(``bench-0``, ``bench-1``) x 20 VRRP instances, flipping MASTER/BACKUP, so every event
is a real transition and fires an ``exec`` action (``/bin/true``) whose outcome is
journaled. Then ``knotify web`` serves that journal while the router still runs, and
each page is fetched ``--rounds`` times, interleaved round-robin, over one keep-alive
connection. The baseline is ``/healthz`` of the same server (aiohttp, the same
middleware, no journal read): every figure is printed as a ratio against it.

Pages measured: the overview, a cluster's timeline (24 h and 7 d: every band and mark
of VI_1), a host's timeline (its 20 lanes, 5,000 changes), an incident (the 500
events it shows), the history (50 events with outcomes), the history filtered with
wildcards; and, not a page but the same code, the report of every instance
(``knotify report --html``, in-process: 40 lanes, all 10,000 changes, one incident).

Target: every page answers in under 500 ms (median).

    .venv/bin/python bench/web.py [--events 10000] [--rounds 15] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from _common import (
    KEnv,
    Router,
    load,
    machine,
    make_messages,
    median,
    percentile,
    revision,
    run_tag,
    send_pipelined,
    table,
    verdict,
)

TARGET_MS = 500.0
HOSTS = 2
NAMES = 20
RULE = """
[[rule]]
id = "bench-exec"
kind = "INSTANCE"
[[rule.action]]
type = "exec"
argv = ["/bin/true"]
timeout = "10s"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(kenv: KEnv, router: Router, events: int) -> dict[str, Any]:
    """Send ``events`` events (half per host) and wait until every action ran."""
    tag = run_tag()
    per_host = events // HOSTS
    sent = [send_pipelined(kenv.endpoint, make_messages(tag, host, 0, per_host, NAMES), 256,
                           spool_dir=str(kenv.spool_dir)) for host in range(HOSTS)]
    deadline = time.monotonic() + 600
    while True:
        stats = router.stats()
        done = sum(stats.get("action_outcomes", {}).values())
        if stats["journaled"] >= events and done >= events and not stats["actions_queued"] \
                and not stats["actions_running"]:
            return {"journaled": stats["journaled"], "actions": done,
                    "acked": sum(s["acked"] for s in sent)}
        if time.monotonic() > deadline:
            raise RuntimeError(f"not settled after 600 s: {stats}")
        time.sleep(0.5)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, float, int]:
    started = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, (time.perf_counter() - started) * 1000, len(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    load_before = load()
    kenv = KEnv("knbw-")
    kenv.write_config(RULE)
    router = Router(kenv, log_level="warning", discard_log=True)
    web: subprocess.Popen[bytes] | None = None
    try:
        filled = fill(kenv, router, args.events)
        db_bytes = sum(p.stat().st_size for p in kenv.state.glob("journal.db*"))
        history = router.request("history", timeout=30, limit=1, name="VI_1",
                                 transitions=True)["events"]
        incident_id = history[0]["id"]
        port = free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "knotify.cli", "web", "--listen", f"127.0.0.1:{port}",
             "--log-level", "warning"], env=kenv.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(conn, "/healthz")[0] == 200:
                    break
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if time.monotonic() > deadline:
                raise RuntimeError("knotify web did not start")
            time.sleep(0.1)
        pages = {
            "baseline /healthz": "/healthz",
            "overview": "/",
            "timeline, cluster VI_1, 24h": "/timeline?cluster=VI_1&window=24h",
            "timeline, host bench-0, 24h": "/timeline?host=bench-0&window=24h",
            "timeline, cluster VI_1, 7d": "/timeline?cluster=VI_1&window=7d",
            "incident": f"/incident/{incident_id}",
            "history (50 events)": "/history",
            "history, name=VI_1*, changes": "/history?name=VI_1*&transitions=1",
        }
        times: dict[str, list[float]] = {name: [] for name in pages}
        sizes: dict[str, int] = {}
        for name, path in pages.items():  # warm-up (first connections, caches)
            status, _, size = get(conn, path)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
            sizes[name] = size
        names = list(pages)
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                times[name].append(get(conn, pages[name])[1])
        conn.close()
        # The report, in-process: the same data module and templates, one file.
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from knotify.web import data, report

        report_ms: list[float] = []
        for _ in range(max(3, args.rounds // 3)):
            started = time.perf_counter()
            db = data.connect(str(kenv.journal))
            html = report.build(db, time.time_ns() - 86400 * 10**9, time.time_ns())
            db.close()
            report_ms.append((time.perf_counter() - started) * 1000)
        times["report --html, every instance, 24h"] = report_ms
        sizes["report --html, every instance, 24h"] = len(html.encode())
    finally:
        if web is not None and web.poll() is None:
            web.send_signal(signal.SIGTERM)
            web.wait(30)
        router.stop()
    base = median(times["baseline /healthz"])
    results = {name: {"median_ms": round(median(v), 2), "p90_ms": round(percentile(v, 90), 2),
                      "x_baseline": round(median(v) / base, 1), "bytes": sizes[name],
                      "met": median(v) < TARGET_MS} for name, v in times.items()}
    out = {"revision": revision(), "machine": machine(), "load_before": load_before,
           "load_after": load(), "events": filled, "journal_bytes": db_bytes,
           "rounds": args.rounds, "results": results,
           "target_met": all(r["met"] for n, r in results.items()
                             if n != "baseline /healthz" and not n.startswith("report"))}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"knotify {out['revision']} on {out['machine']}")
    print(f"journal: {filled['journaled']} events, {filled['actions']} action runs, "
          f"{db_bytes / 1e6:.1f} MB; {args.rounds} rounds; load {load_before} -> {load()}")
    rows = [[name, f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['x_baseline']:.1f}x",
             f"{r['bytes'] / 1024:.0f} KiB", "" if name.startswith("baseline") else
             "(not a page)" if name.startswith("report") else verdict(r["met"])]
            for name, r in results.items()]
    print(table(["page", "median ms", "p90 ms", "x baseline", "size", "< 500 ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
