"""knotify test-alert: send a test message to one receiver and say what happened per URL."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from knotify.alerts import attempt
from knotify.commands import fail, load_config
from knotify.commands.table import clean
from knotify.vocab import OK

HELP = "send a test message to RECEIVER (from the config) and print what happened per URL"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("receiver", help="a [receivers.NAME] of the config")
    parser.add_argument("--title", help="the title (default: 'knotify test alert from HOST')")
    parser.add_argument("--body", help="the body (default: a short test text)")
    parser.add_argument("--dry-run", action="store_true",
                        help="only show the URLs that would be notified")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    receiver = config.receivers.get(args.receiver)
    if receiver is None:
        return fail(f"no receiver {args.receiver!r} in {config.path}; known: "
                    + (", ".join(sorted(config.receivers)) or "none"), 2)
    print(clean(receiver.describe()))
    if args.dry_run:
        return 0
    host = os.uname().nodename
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    job = {
        **receiver.job(),
        "title": args.title or f"knotify test alert from {host}",
        "body": args.body or (f"This is a test message from knotify on {host} to receiver "
                              f"{receiver.name}, sent by `knotify test-alert` at {when}.\n"
                              "If you can read it, this receiver works."),
        "type": "info", "skip": [],
    }
    folder = tempfile.mkdtemp(prefix="knotify-test-alert-")
    path = os.path.join(folder, "result.jsonl")
    timed_out = False
    note = ""
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", attempt.SENDER_MODULE, "--result", path],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, text=True)
        try:
            _, err = proc.communicate(json.dumps(job), timeout=receiver.timeout + attempt.GRACE)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            note = f"timed out after {receiver.timeout:g}s"
        if proc.returncode and not timed_out:
            lines = (err or "").strip().splitlines()
            note = f"the sender exited {proc.returncode}" + (f": {lines[-1]}" if lines else "")
        verdict = attempt.verdict(attempt.read_results(path), [], timed_out, note)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for url in verdict.urls:
        elapsed = f" ({url['elapsed']:.2f}s)" if isinstance(url.get("elapsed"), float) else ""
        if url["ok"]:
            print(clean(f"  ok      {url['url']}{elapsed}"))
        else:
            print(clean(f"  FAILED  {url['url']}{elapsed}: {receiver.scrub(url['error'])}"))
    if verdict.status == OK:
        print(f"sent to all {len(verdict.urls)} URL(s)")
        return 0
    if not verdict.urls:
        print(clean(f"  FAILED  {receiver.scrub(verdict.error)}"))
    return 1
