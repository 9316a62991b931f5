"""knotify web: status, timeline, incidents and history as web pages, updated live."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from knotify import log as logmod
from knotify.commands import client_settings, fail, load_config

HELP = ("serve web pages: overview, failover timeline, incidents, history, updated live "
        "(its own process; reads the journal read-only)")
DEFAULT_LISTEN = "127.0.0.1:8650"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where to serve (default {DEFAULT_LISTEN}; port 0 picks one)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="require this token (the file's first line): 'Authorization: "
                        "Bearer TOKEN', basic auth with it as the password, or /login?token=")
    parser.add_argument("--users-file", metavar="FILE",
                        help="require HTTP basic auth: user:password lines")
    parser.add_argument("--journal", metavar="FILE",
                        help="the journal to read (default: the config's)")
    parser.add_argument("--endpoint", metavar="ENDPOINT",
                        help="the router's PUB socket (default: events.sock in its runtime_dir)")
    parser.add_argument("--any-host", action="store_true",
                        help="without a token, answer whatever Host the request names (only "
                        "behind a proxy that checks it)")
    parser.add_argument("--log-format", choices=("auto", "json", "console"),
                        help="override [log] format")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override [log] level")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen: expected HOST:PORT such as {DEFAULT_LISTEN}, found "
                         f"{text!r}")
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    from knotify.errors import AuthFileError
    from knotify.web.auth import Auth, load_token, load_users, loopback_host
    from knotify.web.server import WebSettings, serve

    config = load_config(args)
    logmod.setup(args.log_format or config.log_format, args.log_level or config.log_level)
    try:
        host, port = parse_listen(args.listen)
        auth = Auth(load_token(args.token_file) if args.token_file else None,
                    load_users(args.users_file) if args.users_file else {})
    except (ValueError, AuthFileError) as exc:
        return fail(str(exc), 2)
    if not auth.required and not loopback_host(host) and not args.any_host:
        return fail(f"--listen {args.listen}: serving beyond this machine needs --token-file "
                    "or --users-file (or --any-host behind a proxy that authenticates)", 2)
    settings = WebSettings(journal=args.journal or config.journal,
                           pub_endpoint=args.endpoint or config.pub_endpoint, host=host,
                           port=port, auth=auth, router=client_settings(args),
                           any_host=args.any_host)
    log = logmod.get(component="web")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)

        def ready(url: str) -> None:
            print(f"knotify web: {url}", flush=True)

        await serve(settings, log, ready, stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        return fail(f"cannot serve on {args.listen}: {exc.strerror or exc}")
    return 0
