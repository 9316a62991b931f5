"""Hook latency: wall time of one ``knotify-notify`` call, router running, event acked.

Measured in one run, interleaved round-robin so every variant shares the same noise:

- ``python -I -c pass`` with the venv's own interpreter (the floor any Python hook pays);
- the hook as the console script (``.venv/bin/knotify-notify``);
- the hook as the documented wrapper (hooks/knotify-notify: ``/bin/sh`` exec-ing
  ``python -I -c ...``), regenerated here to point at this venv's python;
- the common baseline: a ``/bin/sh`` notify script calling the ``apprise`` CLI, which
  POSTs to a local http.server receiver (``json://127.0.0.1:PORT/``).

Processes are started with ``posix_spawn`` and reaped with ``waitpid`` (as little
harness overhead as possible). Afterwards the router is stopped and the journal is
counted: every hook event must be there, and nothing may have been spooled.

Targets (issue): hook <= 3x the bare interpreter, and < 0.12x the apprise CLI.

    .venv/bin/python bench/hook.py [--rounds 30] [--warmup 3] [--json]
        [--python VENV/bin/python] [--compare OTHER-VENV/bin/python ...]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BIN,
    LOG_RULE,
    ROOT,
    KEnv,
    Router,
    count_rows,
    load,
    machine,
    median,
    percentile,
    revision,
)
from _common import table as fmt_table

HOOK_TARGET = 3.0  # x bare interpreter
APPRISE_TARGET = 0.12  # x apprise CLI
WRAPPER_PYTHON = "/opt/knotify/venv/bin/python"


class Receiver(http.server.BaseHTTPRequestHandler):
    """Accepts apprise's JSON POST and answers 200; counts what it got."""

    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        with Receiver.lock:
            Receiver.received += 1 if body else 0
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Variant:
    name: str
    argv: list[str]
    times_ms: list[float] = field(default_factory=list)
    failures: int = 0
    is_hook: bool = False

    def args_for(self, i: int) -> list[str]:
        if not self.is_hook and not self.name.startswith("apprise"):
            return self.argv
        # Alternate MASTER/BACKUP so each hook event is a real transition.
        state = "MASTER" if i % 2 == 0 else "BACKUP"
        return [*self.argv, "INSTANCE", "VI_1", state, "100"]


def spawn_wait(argv: list[str], env: dict[str, str], errfile: str) -> tuple[float, int]:
    """Wall time (ms) and exit status of one process; stdout to /dev/null, stderr appended."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, errfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
    ]
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    t1 = time.perf_counter_ns()
    return (t1 - t0) / 1e6, os.waitstatus_to_exitcode(status)


def make_wrapper(kenv: KEnv, python: str, name: str = "knotify-notify") -> str:
    """hooks/knotify-notify with its interpreter pointed at ``python`` (nothing else changed)."""
    text = (ROOT / "hooks" / "knotify-notify").read_text()
    if WRAPPER_PYTHON not in text:
        raise SystemExit(f"hooks/knotify-notify no longer names {WRAPPER_PYTHON}; update bench")
    path = kenv.root / name
    path.write_text(text.replace(WRAPPER_PYTHON, python))
    path.chmod(0o755)
    return str(path)


def make_apprise_script(kenv: KEnv, apprise: Path, port: int) -> str:
    """The usual glue: a notify script that calls the apprise CLI with keepalived's words."""
    path = kenv.root / "notify-apprise.sh"
    path.write_text(
        "#!/bin/sh\n"
        "# keepalived notify script: INSTANCE|GROUP NAME STATE PRIO\n"
        f'exec {apprise} -t "keepalived $2 is now $3" -b "$*" json://127.0.0.1:{port}/\n'
    )
    path.chmod(0o755)
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="measured rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured rounds first")
    parser.add_argument("--no-apprise", action="store_true", help="skip the apprise baseline")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--python", default=str(BIN / "python"), metavar="VENV/bin/python",
                        help="the venv whose hook and interpreter are measured (default: this "
                        "one); e.g. a non-editable install, as in production")
    parser.add_argument("--compare", action="append", default=[], metavar="VENV/bin/python",
                        help="also measure this install's hook, in the same rounds (e.g. the "
                        "revision before a change); repeatable")
    args = parser.parse_args()
    load_before = load()

    python = args.python
    bindir = Path(python).parent  # not resolved: the venv's own bin, not the base python's
    console = bindir / "knotify-notify"
    if not console.exists():
        raise SystemExit(f"{console} not found: run with the venv's python (.venv/bin/python) "
                         "or name one with --python")
    others = [Path(p) for p in args.compare]
    for other in others:
        if not (other.parent / "knotify-notify").exists():
            raise SystemExit(f"--compare {other}: no knotify-notify beside it")
    apprise_bin = bindir / "apprise"
    if not apprise_bin.exists():
        apprise_bin = BIN / "apprise"
    editable = sorted(p.name for p in bindir.parent.glob("lib/python*/site-packages/__editable__*"))

    kenv = KEnv()
    kenv.env["HOME"] = str(kenv.root)  # apprise's persistent storage stays in the temp dir
    kenv.write_config(LOG_RULE)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    router = Router(kenv)
    errfile = str(kenv.root / "stderr.txt")
    try:
        variants = [
            Variant("python -I -c pass", [python, "-I", "-c", "pass"]),
            Variant("knotify-notify (console script)", [str(console)], is_hook=True),
            Variant("knotify-notify (sh wrapper, -I)", [make_wrapper(kenv, python)],
                    is_hook=True),
        ]
        for i, other in enumerate(others, 1):
            tag = f" [{other.parent.parent}]"
            variants += [
                Variant("knotify-notify (console script)" + tag,
                        [str(other.parent / "knotify-notify")], is_hook=True),
                Variant("knotify-notify (sh wrapper, -I)" + tag,
                        [make_wrapper(kenv, str(other), f"knotify-notify-{i}")], is_hook=True),
            ]
        if not args.no_apprise:
            variants.append(Variant("apprise CLI notify script",
                                    [make_apprise_script(kenv, apprise_bin, port)]))
        hook_calls = 0
        total = args.warmup + args.rounds
        for rnd in range(total):
            # Round-robin, rotating who goes first so no variant always follows another.
            shift = rnd % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                ms, code = spawn_wait(variant.args_for(rnd), kenv.env, errfile)
                hook_calls += variant.is_hook
                if code != 0:
                    variant.failures += 1
                if rnd >= args.warmup:
                    variant.times_ms.append(ms)
            if not args.json:
                print(f"\rround {rnd + 1}/{total}", end="", file=sys.stderr, flush=True)
        if not args.json:
            print(file=sys.stderr)
    finally:
        router.stop()
        server.shutdown()
    rows = count_rows(kenv.journal)
    spooled = kenv.spooled()
    stderr_text = Path(errfile).read_text(errors="replace") if Path(errfile).exists() else ""
    kenv.cleanup()

    by_name = {v.name: v for v in variants}
    bare = median(variants[0].times_ms)
    apprise = by_name.get("apprise CLI notify script")
    apprise_med = median(apprise.times_ms) if apprise else None
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
        "revision": revision(), "load_before": load_before, "load_after": load(),
        "rounds": args.rounds, "warmup": args.warmup, "variants": [],
        "hook_events": hook_calls, "journaled": rows["events"], "spooled": spooled,
        "apprise_posts_received": Receiver.received, "python": python,
        "editable_install": bool(editable),
    }
    table_rows: list[list[str]] = []
    verdicts: list[str] = []
    for v in variants:
        med, p90 = median(v.times_ms), percentile(v.times_ms, 90)
        entry: dict[str, Any] = {
            "name": v.name, "median_ms": round(med, 2), "p90_ms": round(p90, 2),
            "min_ms": round(min(v.times_ms), 2), "failures": v.failures,
            "x_bare": round(med / bare, 3),
            "x_apprise": round(med / apprise_med, 4) if apprise_med else None,
        }
        results["variants"].append(entry)
        table_rows.append([
            v.name, f"{med:.1f}", f"{p90:.1f}", f"{min(v.times_ms):.1f}",
            f"{med / bare:.2f}x", f"{med / apprise_med:.3f}x" if apprise_med else "-",
            str(v.failures),
        ])
        if v.is_hook:
            ok_bare = med / bare <= HOOK_TARGET
            verdicts.append(f"{v.name}: {med / bare:.2f}x bare interpreter "
                            f"(target <= {HOOK_TARGET:g}x): {'MET' if ok_bare else 'NOT MET'}")
            entry["target_bare_met"] = ok_bare
            if apprise_med:
                ok_app = med / apprise_med < APPRISE_TARGET
                verdicts.append(f"{v.name}: {med / apprise_med:.3f}x apprise CLI "
                                f"(target < {APPRISE_TARGET:g}x): "
                                f"{'MET' if ok_app else 'NOT MET'}")
                entry["target_apprise_met"] = ok_app
    problems: list[str] = []
    if rows["events"] != hook_calls:
        problems.append(f"journal has {rows['events']} events, hooks ran {hook_calls} times")
    if spooled:
        problems.append(f"{spooled} events were spooled (not acked in time)")
    if any(v.failures for v in variants):
        problems.append("some runs exited non-zero")
    if apprise and Receiver.received != args.rounds + args.warmup:
        problems.append(f"the receiver got {Receiver.received} apprise POSTs, expected "
                        f"{args.rounds + args.warmup}")
    if stderr_text.strip():
        problems.append("stderr output: " + stderr_text.strip()[:500])
    results["problems"] = problems

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"knotify hook latency — {results['date']}")
    print(f"machine: {results['machine']}")
    print(f"knotify: {results['revision']}; load average before {results['load_before']}, "
          f"after {results['load_after']}")
    print(f"measured venv: {python}")
    if editable:
        print("note: this venv has an editable install (" + ", ".join(editable) + "); its .pth "
              "finder runs at every start-up (~10 ms here), inflating both the hook and the "
              "bare interpreter. Production-like: --python /path/to/non-editable/venv/bin/python")
    print(f"{args.rounds} measured rounds (+{args.warmup} warm-up), interleaved; "
          "times are wall ms per process\n")
    print(fmt_table(["variant", "median", "p90", "min", "x bare", "x apprise", "fail"],
                    table_rows))
    print()
    for line in verdicts:
        print(line)
    print(f"\nchecks: {rows['events']}/{hook_calls} hook events journaled, {spooled} spooled, "
          f"{Receiver.received} apprise POSTs received")
    for p in problems:
        print("PROBLEM: " + p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
