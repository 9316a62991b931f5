"""knotify report: the failover timeline and incidents of a window as one HTML file."""

from __future__ import annotations

import argparse
import os
import time

from knotify.commands import fail, load_config
from knotify.errors import JournalUnavailable
from knotify.units import parse_duration

HELP = ("write the timeline and every incident of a window as one self-contained HTML file "
        "(for a postmortem): report --html FILE [--since 24h] [--cluster NAME]")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--html", required=True, metavar="FILE",
                        help="where to write the report ('-' for standard output)")
    parser.add_argument("--since", default="24h", metavar="DURATION",
                        help="how far back (default 24h), e.g. 1h, 7d")
    parser.add_argument("--until", metavar="DURATION",
                        help="end this long ago (default: now)")
    parser.add_argument("--cluster", metavar="NAME",
                        help="one VRRP instance or sync group (default: all of them)")
    parser.add_argument("--journal", metavar="FILE",
                        help="the journal to read (default: the config's)")


def run(args: argparse.Namespace) -> int:
    from knotify.web import data, report

    try:
        since_s = parse_duration(args.since)
        until_s = parse_duration(args.until) if args.until else 0.0
    except ValueError as exc:
        return fail(f"--since/--until: {exc}", 2)
    if since_s <= until_s:
        return fail("--since must reach further back than --until", 2)
    journal = args.journal or load_config(args).journal
    now = time.time_ns()
    try:
        db = data.connect(journal)
    except JournalUnavailable as exc:
        return fail(str(exc))
    try:
        html = report.build(db, now - int(since_s * 1e9), now - int(until_s * 1e9),
                            args.cluster, now)
    finally:
        db.close()
    if args.html == "-":
        print(html)
        return 0
    import tempfile

    folder = os.path.dirname(os.path.abspath(args.html))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".knotify-report-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.html)
    except OSError as exc:
        return fail(f"cannot write {args.html}: {exc.strerror or exc}")
    print(f"wrote {args.html} ({len(html) // 1024} KiB)")
    return 0
