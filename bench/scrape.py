"""What a /metrics scrape and a status reply cost the router's event loop, at many keys.

A router is given ``--keys`` keys (10,000 by default: 10 hosts x 1,000 instances),
then a client pings it every 10 ms (each ping waits for the loop) while another one
scrapes ``/metrics`` and asks ``status`` over and over. Reported: the ping latency
(median, p99, max) with nothing else going on (the baseline, same run) and during the
scrapes and status replies, as ratios; and each scrape's and reply's size and time.
Run from the repository root::

    .venv/bin/python bench/scrape.py [--keys 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KEnv, Router, load, machine, median, percentile, revision, table
from soak import free_port

from knotify import zmtp


def pings(endpoint: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        zmtp.request(endpoint, b'{"v":1,"op":"ping"}', 60)
        out.append(time.monotonic() - started)
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"knotify {revision()} on {machine()}; load {load()}")
    kenv = KEnv("knm-")
    port = free_port()
    kenv.config.write_text(
        f'[paths]\nruntime_dir = "{kenv.runtime}"\nstate_dir = "{kenv.state}"\n'
        f'[router]\nmax_keys = {max(args.keys, 10)}\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    router = Router(kenv, discard_log=True)
    results: dict[str, Any] = {"keys": args.keys}
    try:
        dealer = zmtp.Dealer(kenv.endpoint, 600)
        hosts = max(1, args.keys // 1000)
        for h in range(hosts):
            events = [{"v": 1, "id": f"k{h:04d}x{i:08d}", "host": f"host{h}",
                       "kind": "INSTANCE", "name": f"VI_{i}", "state": "MASTER", "prio": 100,
                       "source": "send"} for i in range(min(1000, args.keys))]
            dealer.send(json.dumps({"v": 1, "op": "events", "events": events}).encode())
        for _ in range(hosts):
            dealer.recv()
        dealer.close()
        phases: dict[str, list[float]] = {}
        for phase in ("baseline", "scrapes"):
            latencies: list[float] = []
            stop = threading.Event()
            pinger = threading.Thread(target=pings, args=(kenv.endpoint, stop, latencies))
            pinger.start()
            if phase == "baseline":
                time.sleep(5)
            else:
                for _ in range(args.rounds):
                    started = time.monotonic()
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                  timeout=120).read()
                    results.setdefault("scrape_s", []).append(
                        round(time.monotonic() - started, 3))
                    results["scrape_bytes"] = len(body)
                    started = time.monotonic()
                    raw = zmtp.request(kenv.endpoint, b'{"v":1,"op":"status"}', 120)
                    results.setdefault("status_s", []).append(
                        round(time.monotonic() - started, 3))
                    results["status_bytes"] = len(raw)
                    time.sleep(2.1)  # past the 2 s cache: every round renders afresh
            stop.set()
            pinger.join()
            phases[phase] = latencies
        router.stop()
    finally:
        if router.proc.poll() is None:
            router.proc.kill()
    base, busy = phases["baseline"], phases["scrapes"]
    rows = []
    for name, values in (("baseline (idle)", base), ("during scrapes + status", busy)):
        rows.append([name, str(len(values)), f"{median(values) * 1000:.1f}",
                     f"{percentile(values, 99) * 1000:.1f}", f"{max(values) * 1000:.1f}",
                     f"{max(values) / max(base):.1f}x"])
    print(f"{args.keys} keys; /metrics {results['scrape_bytes']:,} bytes, scrape times "
          f"{results['scrape_s']} s; status (first page) {results['status_bytes']:,} bytes, "
          f"times {results['status_s']} s")
    print(table(["ping latency", "pings", "median ms", "p99 ms", "max ms", "max x base"], rows))
    results.update({"ping_base_max_s": max(base), "ping_busy_max_s": max(busy),
                    "ping_busy_p99_s": percentile(busy, 99)})
    print(f"target: the loop never held for seconds (longest ping during scrapes "
          f"{max(busy):.3f} s): {'MET' if max(busy) < 1.0 else 'NOT MET'}")
    print(f"load after: {load()}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
