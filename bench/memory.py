"""Router memory: RSS while 1,000,000 events over 1,000 keys go through it.

The same senders as bench/intake.py (knotify's ZMTP client, 8 processes, a window of
requests in flight, a ``log`` action on every event) feed one router in phases up to
10%, 50% and 100% of ``--events``. The router's VmRSS and VmHWM (peak) are read from
/proc/PID/status: right after each phase's last ack, and again once every action of
the phase has run (settled); a sampler also records the highest VmRSS seen.

Baseline in the same run: the idle router's RSS just after start-up (ratios are
against it). Zero loss is checked by counting the journal's rows at the end.

Target (issue): router RSS stays under 100 MiB after 1,000,000 events over 1,000 keys.

    .venv/bin/python bench/memory.py [--events 1000000] [--senders 8] [--rate N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from _common import (
    LOG_RULE,
    KEnv,
    Router,
    count_rows,
    knotify_sender,
    load,
    machine,
    proc_status,
    revision,
    run_senders,
    run_tag,
    runs_by_status,
    verdict,
)
from _common import table as fmt_table

TARGET_MIB = 100.0
TOTAL_KEYS = 1000
CHECKPOINTS = (0.1, 0.5, 1.0)


class Sampler(threading.Thread):
    """Reads the router's VmRSS every ``interval`` seconds; keeps the highest."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.max_rss_kib = 0
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                rss = proc_status(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            self.max_rss_kib = max(self.max_rss_kib, rss)
            self.samples += 1
            self.stopping.wait(self.interval)


def mib(kib: int) -> float:
    return kib / 1024


def wait_routed(router: Router, total: int, timeout: float = 1800) -> dict[str, Any]:
    """Wait until the router has finished an action for each of ``total`` events."""
    deadline = time.monotonic() + timeout
    while True:
        stats = router.stats()
        if (sum(stats["action_outcomes"].values()) >= total and not stats["actions_queued"]
                and not stats["actions_running"] and not stats.get("spool_depth")):
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(f"actions not finished after {timeout}s: {stats}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="total events (default 1000000)")
    parser.add_argument("--senders", type=int, default=8, help="sender processes (default 8)")
    parser.add_argument("--window", type=int, default=256,
                        help="requests in flight per sender (default 256)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="pace the senders to this many events/s in all (default: as fast "
                        "as the router acks)")
    parser.add_argument("--synchronous", default="full", choices=("full", "normal"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    load_before = load()
    names = max(1, TOTAL_KEYS // args.senders)
    rate = args.rate / args.senders
    per_sender_total = args.events // args.senders
    total = per_sender_total * args.senders

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    kenv = KEnv("knb-mem-")
    kenv.write_config(LOG_RULE, router=f'synchronous = "{args.synchronous}"')
    # The router's log (two JSON lines per event, ~0.5 GB per million) goes to /dev/null:
    # the router does the same work, the disk is spared.
    try:
        router = Router(kenv, discard_log=True)
    except BaseException:
        kenv.cleanup()
        raise
    sampler = Sampler(router.pid)
    points: list[dict[str, Any]] = []
    tag = run_tag()
    spool_dir = str(kenv.spool_dir)
    spooled = shed = 0
    t_begin = time.monotonic()
    try:
        time.sleep(1.0)  # let start-up allocations settle
        start = proc_status(router.pid)
        points.append({"events": 0, "rss_acked_kib": start["VmRSS"],
                       "rss_settled_kib": start["VmRSS"], "hwm_kib": start["VmHWM"],
                       "seconds": 0.0, "actions_queued_at_ack": 0,
                       "rss_anon_kib": start.get("RssAnon", 0),
                       "rss_file_kib": start.get("RssFile", 0),
                       "rss_shmem_kib": start.get("RssShmem", 0)})
        sampler.start()
        sent = 0  # per sender
        for fraction in CHECKPOINTS:
            upto = round(per_sender_total * fraction)
            count = upto - sent
            if count <= 0:
                continue
            say(f"sending events {sent * args.senders:,} .. {upto * args.senders:,} ...")
            offset = sent
            outs = run_senders(
                knotify_sender,
                lambda i, off=offset, n=count: (kenv.endpoint, tag, i, off, n, names,
                                                args.window, rate, spool_dir),
                args.senders)
            spooled += sum(int(o["spooled"]) for o in outs)
            acked = proc_status(router.pid)
            backlog = router.stats()["actions_queued"]
            stats = wait_routed(router, upto * args.senders)
            settled = proc_status(router.pid)
            shed = int(stats.get("shed", 0))
            sent = upto
            points.append({
                "events": upto * args.senders, "rss_acked_kib": acked["VmRSS"],
                "rss_settled_kib": settled["VmRSS"], "hwm_kib": settled["VmHWM"],
                "seconds": time.monotonic() - t_begin, "keys": stats["keys"],
                "journaled": stats["journaled"], "actions_queued_at_ack": backlog,
                "rss_anon_kib": settled.get("RssAnon", 0),
                "rss_file_kib": settled.get("RssFile", 0),
                "rss_shmem_kib": settled.get("RssShmem", 0),
            })
        final = proc_status(router.pid)
    finally:
        sampler.stopping.set()
        try:
            router.stop()
        finally:
            try:
                rows = count_rows(kenv.journal, tag)
                journal_mib = kenv.journal.stat().st_size / 2**20
            finally:
                kenv.cleanup()

    peak_kib = max(final["VmHWM"], sampler.max_rss_kib)
    base = start["VmRSS"]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
        "revision": revision(), "load_before": load_before, "load_after": load(),
        "events": total, "senders": args.senders, "keys": names * args.senders,
        "synchronous": args.synchronous, "rate": args.rate, "points": points,
        "peak_hwm_kib": final["VmHWM"], "peak_sampled_kib": sampler.max_rss_kib,
        "journal": rows, "journal_mib": journal_mib, "lost": total - rows["tagged"],
        "extra": rows["events"] - rows["tagged"], "spooled_by_senders": spooled,
        "shed_by_router": shed,
        "target_mib": TARGET_MIB, "target_met": mib(peak_kib) < TARGET_MIB,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"knotify router memory — {results['date']}")
    print(f"machine: {results['machine']}")
    print(f"knotify: {results['revision']}; load average before {results['load_before']}, "
          f"after {results['load_after']}")
    pace = f"paced at {args.rate:,.0f} events/s" if args.rate else "as fast as acked"
    print(f"{total:,} events over {results['keys']} keys from {args.senders} senders ({pace}), "
          f"log action on every event, synchronous={args.synchronous}\n")
    table_rows = []
    for p in points:
        label = "start (idle)" if not p["events"] else f"after {p['events']:,}"
        table_rows.append([
            label, f"{mib(p['rss_acked_kib']):.1f}", f"{mib(p['rss_settled_kib']):.1f}",
            f"{mib(p['hwm_kib']):.1f}", f"{p['rss_settled_kib'] / base:.2f}x",
            f"{mib(p['rss_anon_kib']):.0f}/{mib(p['rss_file_kib']):.0f}/"
            f"{mib(p['rss_shmem_kib']):.0f}",
            f"{p['actions_queued_at_ack']:,}", f"{p['seconds']:.0f}",
        ])
    print(fmt_table(["checkpoint", "RSS acked MiB", "RSS settled MiB", "VmHWM MiB",
                     "x start", "anon/file/shm", "backlog at ack", "t (s)"], table_rows))
    print("(acked: right after the last ack; settled: once every action ran; backlog: "
          "actions queued in the router at the last ack)")
    print(f"\npeak: VmHWM {mib(final['VmHWM']):.1f} MiB, highest sampled VmRSS "
          f"{mib(sampler.max_rss_kib):.1f} MiB ({sampler.samples} samples), "
          f"{peak_kib / base:.2f}x the idle router")
    print(f"journal: {rows['tagged']:,} of the {total:,} events sent ({results['lost']} lost), "
          f"runs {runs_by_status(rows)}, file {journal_mib:.0f} MiB; {spooled:,} events "
          f"refused as busy (router shed {shed:,}) and spooled by the senders, as the hook does")
    if results["extra"]:
        print(f"+ {results['extra']} events the router made itself (not sent): "
              f"{rows['others']}")
    print(f"target peak RSS < {TARGET_MIB:g} MiB: {mib(peak_kib):.1f} MiB: "
          f"{verdict(results['target_met'] and results['lost'] == 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
