"""A failover's time to the page with a hanging exec action beside it, vs without.

Issue 11: a page waited behind the same instance's other actions, so a hung
``systemctl restart`` (timeout 60 s in the shipped example) delayed the failover page
by up to a minute. One real router (``knotify run``), one local HTTP receiver (in
this process, recording when each ``json://`` POST arrived), two kinds of instance:

- **alone** (the baseline, same run, same router): ``VI_A<i>`` has only the page rule;
- **hang beside**: ``VI_H<i>`` has an ``exec`` rule *before* the page rule, on MASTER,
  that sleeps ``--hang`` seconds (30 by default, like a hung restart; timeout beyond it).

Each round sends one failover of each (BACKUP -> MASTER, through knotify's own client,
stamped as the hook stamps), the order alternating between rounds, and times each from
the send to the page's arrival, **minus group_wait** (the wait knotify adds on purpose;
``group_by = ["name"]``, so every page is its own message). When every page of the run
has arrived, the router's history must still show every hanging exec ``running``: the
pages did not wait for them.

Target (issue 11, "done when"): a page on MASTER arrives within group_wait + 1 s while
an exec of its instance hangs; ratio hang/alone (medians) about 1.

    .venv/bin/python bench/page_wait.py [--rounds 10] [--hang 30] [--group-wait 500ms]
        [--json]
"""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
from typing import Any

from _common import (
    BOOT_ID,
    KEnv,
    Router,
    load,
    machine,
    median,
    percentile,
    revision,
    run_tag,
    table,
    verdict,
)

from knotify import fastjson, keepalived, units, zmtp

TARGET_S = 1.0


class Sink:
    """An HTTP receiver in a thread: when each page (by title) arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                try:
                    title = str(json.loads(body).get("title", ""))
                except ValueError:
                    title = "?"
                with sink.lock:
                    sink.arrived.setdefault(title, now)

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.daemon_threads = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, title: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if title in self.arrived:
                    return self.arrived[title]
            time.sleep(0.005)
        return None

    def stop(self) -> None:
        self.server.shutdown()


def message(tag: str, seq: int, name: str, state: str, prio: int) -> bytes:
    """``INSTANCE name state prio`` from host lb1, as ``knotify-notify`` sends it."""
    argv = ["INSTANCE", name, state, str(prio)]
    event: dict[str, object] = {
        "v": 1, "id": f"{tag}{seq:016x}", "host": "lb1", "seq": seq, "ts_ns": time.time_ns(),
        "source": "hook", "mono_ns": time.clock_gettime_ns(time.CLOCK_BOOTTIME),
        "boot": BOOT_ID, "pid": 10_000 + seq,
    }
    event.update(keepalived.parse_argv(argv))
    event["argv"] = argv
    return fastjson.dumps({"v": 1, "op": "event", "event": event}).encode()


def run(rounds: int, hang: float, group_wait: str) -> dict[str, Any]:
    wait_s = units.parse_duration(group_wait)
    sink = Sink()
    kenv = KEnv(prefix="knbp-")
    kenv.env["HOME"] = str(kenv.root)
    kenv.write_config(f"""
[alerts]
group_wait = "{group_wait}"
group_by = ["name"]
flap_threshold = 0

[receivers.chat]
urls = ["json://127.0.0.1:{sink.port}/page"]

[[rule]]
id = "restart"
name = "VI_H*"
state = "MASTER"
[[rule.action]]
type = "exec"
argv = ["sleep", "{hang:g}"]
timeout = "{hang + 30:g}s"

[[rule]]
id = "page"
kind = "INSTANCE"
state = "MASTER"
from = "!INIT"
[[rule.action]]
type = "alert"
receivers = ["chat"]
""", router='drain_timeout = "1s"')
    router = Router(kenv, log_level="warning")
    tag = run_tag()
    seq = 0
    took: dict[str, list[float]] = {"alone": [], "hang": []}
    missing = 0
    try:
        for i in range(rounds):
            for name in (f"VI_A{i}", f"VI_H{i}"):
                seq += 1
                zmtp.request(kenv.endpoint, message(tag, seq, name, "BACKUP", 50), 10)
        time.sleep(0.5)  # past the boot-clock tick of the set-up events
        for i in range(rounds):
            order = ("alone", "hang") if i % 2 == 0 else ("hang", "alone")
            for what in order:
                name = f"VI_{'A' if what == 'alone' else 'H'}{i}"
                seq += 1
                payload = message(tag, seq, name, "MASTER", 100)
                t0 = time.time()
                zmtp.request(kenv.endpoint, payload, 10)
                arrived = sink.wait(f"[lb1] {name} BACKUP -> MASTER", wait_s + hang + 30)
                if arrived is None:
                    missing += 1
                else:
                    took[what].append(arrived - t0 - wait_s)
        # Every hanging exec must still run now: the pages did not wait for them.
        history = router.request("history", timeout=30, limit=10 * rounds, name="VI_H*")
        restarts = [a for ev in history["events"] for a in ev["actions"]
                    if a["rule"] == "restart"]
        running = sum(1 for a in restarts if a["status"] == "running")
    finally:
        router.stop()
        sink.stop()
        kenv.cleanup()
    return {"took": took, "missing": missing, "restarts": len(restarts),
            "still_running": running}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hang", type=float, default=30.0,
                        help="seconds the exec beside the page sleeps (default 30)")
    parser.add_argument("--group-wait", default="500ms")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    before = load()
    result = run(args.rounds, args.hang, args.group_wait)
    after = load()
    took = result["took"]
    alone, hang = took["alone"], took["hang"]
    med_alone = median(alone) if alone else float("nan")
    med_hang = median(hang) if hang else float("nan")
    worst = max(hang) if hang else float("inf")
    ok = (not result["missing"] and worst <= TARGET_S
          and result["still_running"] == result["restarts"] == args.rounds)
    if args.json:
        print(json.dumps({**result, "median_alone_s": med_alone, "median_hang_s": med_hang,
                          "ratio": med_hang / med_alone if med_alone else None,
                          "target_met": ok, "revision": revision(),
                          "load_before": before, "load_after": after}, indent=2))
        return 0
    print(f"knotify {revision()} on {machine()}")
    print(f"load before {before}, after {after}; {args.rounds} rounds, exec sleeps "
          f"{args.hang:g}s, group_wait {args.group_wait} (subtracted)")
    rows = []
    for what, values in (("alone (baseline)", alone), ("hang beside", hang)):
        if values:
            rows.append([what, str(len(values)), f"{median(values) * 1000:.0f}",
                         f"{percentile(values, 90) * 1000:.0f}", f"{max(values) * 1000:.0f}",
                         f"{median(values) / med_alone:.2f}x"])
    print(table(["page after failover", "pages", "median ms", "p90 ms", "max ms", "x alone"],
                rows))
    print(f"hanging execs still running when every page was in: {result['still_running']} "
          f"of {result['restarts']}; pages missing: {result['missing']}")
    print(f"target: every page beside a hanging exec within group_wait + {TARGET_S:g}s: "
          f"{verdict(ok)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
