"""Sustained intake: events/s journaled, acked and routed from concurrent senders.

8 sender processes (by default) each keep one connection through knotify's own client
(:class:`knotify.zmtp.Dealer`, the hook's transport) and pipeline a window of
``{"v":1,"op":"event",...}`` requests, reading acks as they come. Each sender is its own
host with an increasing ``seq``; events go round-robin over 1000 keys in all and flip
MASTER/BACKUP, so each one is a real transition that fires a ``log`` action.

Figures, per ``synchronous`` mode of the router:

- acked/s: events / (first send .. last ack) — journaled (committed) before each ack;
- routed/s: events / (first send .. every log action finished), from the router's stats;
- the router's CPU use over the run (~100% of one core = the router is the bottleneck).

Baseline in the same run: a bare pyzmq PUSH/PULL sink — the same senders, the same
message bytes, one PULL process counting them (median of 3; it is over in a blink).
Zero loss is checked by counting the journal's rows after the router stopped.

Target (issue): at least 20,000 events/s on the 2-core machine.

    .venv/bin/python bench/intake.py [--events 200000] [--senders 8] [--window 256]
        [--synchronous full,normal] [--profile | --py-spy] [--json]
"""

from __future__ import annotations

import argparse
import json
import pstats
import shutil
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from _common import (
    BIN,
    LOG_RULE,
    KEnv,
    Router,
    count_rows,
    cpu_seconds,
    knotify_sender,
    load,
    machine,
    make_messages,
    revision,
    run_senders,
    run_tag,
    runs_by_status,
    verdict,
)
from _common import table as fmt_table

TARGET_EPS = 20_000
TOTAL_KEYS = 1000


def push_sender(endpoint: str, tag: str, sender: int, start: int, count: int, names: int,
                window: int, rate: float, barrier: Any, results: Any) -> None:
    """Baseline sender: the same message bytes over a plain pyzmq PUSH socket."""
    import resource

    import zmq

    messages = make_messages(tag, sender, start, count, names)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(endpoint)
    barrier.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t_start = time.monotonic()
    for msg in messages:
        sock.send(msg)
    t_end = time.monotonic()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sock.close(linger=-1)
    ctx.term()
    results.put({
        "sender": sender, "acked": count, "t_start": t_start, "t_end": t_end,
        "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
    })


def pull_sink(endpoint: str, total: int, ready: Any, results: Any) -> None:
    """Baseline receiver: one PULL socket counting messages (and their bytes)."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind(endpoint)
    ready.set()
    got = size = 0
    t_first = 0.0
    while got < total:
        msg = sock.recv()
        if not got:
            t_first = time.monotonic()
        got += 1
        size += len(msg)
    results.put({"received": got, "bytes": size, "t_first": t_first,
                 "t_last": time.monotonic()})
    sock.close(linger=0)
    ctx.term()


def run_baseline(args: argparse.Namespace, per_sender: int, names: int) -> dict[str, Any]:
    import multiprocessing

    kenv = KEnv("knb-pp-")
    endpoint = "ipc://" + str(kenv.root / "pushpull.sock")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    sink_results = ctx.Queue()
    total = per_sender * args.senders
    sink = ctx.Process(target=pull_sink, args=(endpoint, total, ready, sink_results),
                       daemon=True)
    sink.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("PULL sink did not start")
        tag = run_tag()
        senders = run_senders(
            push_sender,
            lambda i: (endpoint, tag, i, 0, per_sender, names, args.window, 0.0), args.senders)
        sink_out = sink_results.get(timeout=600)
        sink.join(30)
    finally:
        if sink.is_alive():
            sink.kill()
        kenv.cleanup()
    t0 = min(float(s["t_start"]) for s in senders)
    elapsed = float(sink_out["t_last"]) - t0
    return {
        "name": "pyzmq PUSH/PULL sink (baseline)", "events": total,
        "received": sink_out["received"], "elapsed_s": elapsed,
        "eps": sink_out["received"] / elapsed,
        "sender_cpu_s": sum(float(s["cpu_s"]) for s in senders),
        "bytes_per_msg": sink_out["bytes"] / max(1, sink_out["received"]),
    }


def run_knotify(args: argparse.Namespace, sync: str, per_sender: int, names: int
                ) -> dict[str, Any]:
    kenv = KEnv("knb-in-")
    kenv.write_config(LOG_RULE, router=f'synchronous = "{sync}"')
    prof_path = kenv.root / "router.prof"
    wrap = ["-m", "cProfile", "-o", str(prof_path)] if args.profile else []
    router = Router(kenv, wrap=wrap)
    total = per_sender * args.senders
    result: dict[str, Any] = {"name": f"knotify router, synchronous={sync}", "events": total}
    tag = run_tag()
    spy = None
    spy_path = kenv.root / "router.spy.txt"
    if args.py_spy:
        spy = subprocess.Popen(
            [args.py_spy, "record", "--format", "raw", "--rate", "200", "--nonblocking",
             "--output", str(spy_path), "--pid", str(router.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach
    try:
        cpu_before = cpu_seconds(router.pid)
        senders = run_senders(
            knotify_sender,
            lambda i: (kenv.endpoint, tag, i, 0, per_sender, names, args.window, 0.0,
                       str(kenv.spool_dir)),
            args.senders)
        t_acked = max(float(s["t_end"]) for s in senders)
        cpu_acked = cpu_seconds(router.pid)
        backlog = router.stats()["actions_queued"]
        # Routed: every log action has run (the router counts outcomes as they finish).
        deadline = time.monotonic() + 600
        t_routed = None
        while time.monotonic() < deadline:
            stats = router.stats()
            done = sum(stats["action_outcomes"].values())
            if (done >= total and not stats["actions_queued"] and not stats["actions_running"]
                    and not stats.get("spool_depth")):
                t_routed = time.monotonic()
                break
            time.sleep(0.02)
        stats = router.stats()
        t0 = min(float(s["t_start"]) for s in senders)
        acked = sum(int(s["acked"]) for s in senders)
        spooled = sum(int(s["spooled"]) for s in senders)
        rejected = sum(int(s["rejected"]) for s in senders)
        result.update({
            "acked": acked, "spooled": spooled, "rejected": rejected,
            "shed": stats.get("shed", 0), "spool_replayed": stats.get("spool_replayed", 0),
            "elapsed_acked_s": t_acked - t0,
            "eps_acked": acked / (t_acked - t0),
            "elapsed_routed_s": (t_routed - t0) if t_routed else None,
            "eps_routed": (total / (t_routed - t0)) if t_routed else None,
            "router_cpu_pct": 100 * (cpu_acked - cpu_before) / (t_acked - t0),
            "actions_queued_at_ack": backlog,
            "sender_cpu_s": sum(float(s["cpu_s"]) for s in senders),
            "action_outcomes": stats["action_outcomes"],
            "mean_batch": stats["journaled"] / max(1, stats.get("batches", 0)),
        })
    finally:
        code = router.stop()
    rows = count_rows(kenv.journal, tag)
    log_size = router.log_path.stat().st_size
    result.update({"router_exit": code, "journal": rows, "log_bytes": log_size,
                   "lost": total - rows["tagged"], "extra": rows["events"] - rows["tagged"]})
    if args.profile and prof_path.exists():
        result["profile"] = profile_summary(str(prof_path), args.profile_top)
    if spy is not None:
        spy.wait(60)
        if spy_path.exists():
            result["py_spy"] = spy_summary(spy_path.read_text(), args.profile_top)
    kenv.cleanup()
    return result


def profile_summary(path: str, top: int) -> str:
    import io

    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def spy_summary(raw: str, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        self_n[frames[-1]] += n
        for frame in set(frames):
            incl_n[frame] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; self time (top {top}):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_n.most_common(top)]
    lines.append(f"inclusive time (top {top}):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl_n.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``file.py:func`` (line numbers vary per sample)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if "knotify" in parts[-2:-1] else parts[-1]
    return f"{short}:{name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="total (default 200000)")
    parser.add_argument("--senders", type=int, default=8, help="sender processes (default 8)")
    parser.add_argument("--window", type=int, default=256,
                        help="requests in flight per sender (default 256)")
    parser.add_argument("--synchronous", default="full,normal",
                        help="router journal modes to run, comma-separated (default full,normal)")
    parser.add_argument("--no-baseline", action="store_true", help="skip PUSH/PULL baseline")
    parser.add_argument("--profile", action="store_true",
                        help="run the router under cProfile and print its hotspots (slower)")
    parser.add_argument("--py-spy", metavar="PATH", nargs="?", const="py-spy",
                        help="sample the router with py-spy (pip install py-spy) and print "
                        "its hotspots; low overhead, unlike --profile")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    load_before = load()
    if args.py_spy:
        found = shutil.which(args.py_spy) or shutil.which(args.py_spy, path=str(BIN))
        if not found:
            raise SystemExit(f"{args.py_spy} not found: .venv/bin/pip install py-spy")
        args.py_spy = found
    per_sender = args.events // args.senders
    names = max(1, TOTAL_KEYS // args.senders)
    modes = [m.strip() for m in args.synchronous.split(",") if m.strip()]

    def say(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    runs: list[dict[str, Any]] = []
    baseline = None
    if not args.no_baseline:
        say("running the PUSH/PULL baseline (3 times; the median counts) ...")
        tries = sorted((run_baseline(args, per_sender, names) for _ in range(3)),
                       key=lambda b: float(b["eps"]))
        baseline = tries[1]
        baseline["tries_eps"] = [round(float(b["eps"])) for b in tries]
    for sync in modes:
        say(f"running knotify, synchronous={sync} ...")
        runs.append(run_knotify(args, sync, per_sender, names))

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
        "revision": revision(), "load_before": load_before, "load_after": load(),
        "events": per_sender * args.senders, "senders": args.senders, "window": args.window,
        "keys": names * args.senders, "baseline": baseline, "runs": runs,
        "target_eps": TARGET_EPS,
    }
    for run in runs:
        # Sustained means end to end: a stream acked faster than it is routed only piles up.
        sustained = min(run["eps_acked"], run["eps_routed"] or 0.0)
        run["target_acked_met"] = run["eps_acked"] >= TARGET_EPS and run["lost"] == 0
        run["target_met"] = sustained >= TARGET_EPS and run["lost"] == 0
        if baseline:
            run["x_baseline"] = run["eps_acked"] / baseline["eps"]
            run["x_baseline_routed"] = (run["eps_routed"] or 0.0) / baseline["eps"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0

    print(f"knotify sustained intake — {results['date']}")
    print(f"machine: {results['machine']}")
    print(f"knotify: {results['revision']}; load average before {results['load_before']}, "
          f"after {results['load_after']}")
    print(f"{results['events']} events, {args.senders} sender processes, window {args.window}, "
          f"{results['keys']} keys, log action on every event\n")
    rows: list[list[str]] = []
    if baseline:
        rows.append([baseline["name"], f"{baseline['eps']:,.0f}", "1.000x", "-", "-",
                     f"{baseline['elapsed_s']:.2f}", "-", "-", "-"])
    for run in runs:
        routed = f"{run['eps_routed']:,.0f}" if run["eps_routed"] else "timeout"
        rows.append([
            run["name"], f"{run['eps_acked']:,.0f}",
            f"{run['x_baseline']:.4f}x" if baseline else "-", routed,
            f"{run['x_baseline_routed']:.4f}x" if baseline else "-",
            f"{run['elapsed_acked_s']:.2f}", f"{run['router_cpu_pct']:.0f}%",
            f"{run['actions_queued_at_ack']:,}", str(run["lost"]),
        ])
    print(fmt_table(["run", "acked ev/s", "x base", "routed ev/s", "x base", "ack s",
                     "router CPU", "backlog", "lost"], rows))
    print("(acked: first send .. last ack; routed: .. every log action done; router CPU: "
          "over the acked span, 100% = one core; backlog: actions queued at the last ack)\n")
    for run in runs:
        rows_ = run["journal"]
        print(f"{run['name']}: journal has {rows_['tagged']} of the {run['events']} events "
              f"sent, runs {runs_by_status(rows_)}, {run['spooled']} refused as busy and "
              f"spooled by the senders (as the hook does), {run['rejected']} rejected, "
              f"{run['mean_batch']:.0f} events per journal commit on average, router log "
              f"{run['log_bytes'] / 1e6:.1f} MB, senders used {run['sender_cpu_s']:.1f} CPU-s, "
              f"router exit {run['router_exit']}")
        if run["extra"]:
            print(f"  + {run['extra']} events the router made itself (not sent): "
                  f"{rows_['others']}")
        routed_eps = run["eps_routed"] or 0.0
        print(f"  target >= {TARGET_EPS:,} events/s, zero loss: acked {run['eps_acked']:,.0f}/s "
              f"({verdict(run['target_acked_met'])}), journaled and routed {routed_eps:,.0f}/s "
              f"({verdict(run['target_met'])}), lost {run['lost']}")
    for run in runs:
        if "profile" in run:
            print(f"\n== cProfile of the router ({run['name']}) ==\n{run['profile']}")
        if "py_spy" in run:
            print(f"\n== py-spy samples of the router ({run['name']}) ==\n{run['py_spy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
