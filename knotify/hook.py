"""knotify-notify: the program keepalived runs for every notify hook.

It takes the time first, parses the words keepalived gave it, stamps the event
(:mod:`knotify.stamp`) and hands it to the router (:func:`knotify.client.deliver`),
waiting a bounded time for the ack. Without an ack the event goes to the spool and
the hook still exits 0: keepalived must never wait on knotify, and no event is
dropped because the router is down.

This module is on keepalived's hot path: it imports the standard library's
cheapest parts only (no pyzmq, json, re or typing).
"""

from __future__ import annotations

import time

_T0 = time.time_ns()

import sys  # noqa: E402

from knotify import keepalived, paths, spool  # noqa: E402
from knotify.client import Settings, complain, deliver, load_settings  # noqa: E402
from knotify.errors import ParseError  # noqa: E402
from knotify.stamp import invalid, stamp  # noqa: E402

USAGE = "usage: knotify-notify [-c FILE] WORDS...  (" + keepalived.USAGE + ")"


def split_options(argv: list[str]) -> tuple[str | None, list[str]]:
    """``-c FILE`` / ``--config FILE`` / ``--config=FILE`` before the words; ``--`` ends options."""
    config = None
    words = list(argv)
    while words:
        first = words[0]
        if first in ("-c", "--config") and len(words) >= 2:
            config = words[1]
            del words[:2]
        elif first.startswith("--config="):
            config = first.split("=", 1)[1]
            del words[0]
        elif first == "--":
            del words[0]
            break
        else:
            break
    return config, words


def main(argv: list[str] | None = None) -> int:
    ts_ns = _T0 if argv is None else time.time_ns()
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    config, words = split_options(args)
    try:
        settings = load_settings(paths.find_config(config))
    except Exception as exc:  # never a traceback on keepalived's path: defaults then
        settings = Settings()
        settings.config_error = f"config: {type(exc).__name__}: {exc}"
        settings.problems.append(settings.config_error + "; using defaults")
    for problem in settings.problems:
        complain(problem)
    status = 0
    try:
        fields = keepalived.parse_argv(words)
    except ParseError as exc:
        complain(f"{exc} (argv: {keepalived.safe_text(' '.join(args))[:300]!r})")
        fields = invalid("invalid", str(exc))
        status = 2
    # Clipped to what the router accepts (256 words of 4096 characters): an over-long argv
    # must not get the whole event refused, spooled and then quarantined.
    fields["argv"] = [word[:4096] for word in args[:256]]
    try:
        event = stamp(fields, "hook", settings.host, spool.next_seq(settings.spool_dir), ts_ns)
        deliver(event, settings)
    except Exception as exc:  # never a traceback on keepalived's path
        complain(f"internal error: {type(exc).__name__}: {exc}")
    return status


if __name__ == "__main__":
    sys.exit(main())
