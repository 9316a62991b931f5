"""knotify-notify: the program keepalived runs for every notify hook.

It takes the time first, parses the words keepalived gave it, stamps the event
(host, per-host sequence, unique id, raw argv) and hands it to the router over
ZeroMQ, waiting a bounded time for the ack. Without an ack it writes the event
to the spool and still exits 0: keepalived must never wait on knotify, and no
event is dropped because the router is down.

This module is on keepalived's hot path: it imports the standard library's
cheapest parts only (no pyzmq, json, re or typing).
"""

from __future__ import annotations

import time

_T0 = time.time_ns()

import os  # noqa: E402
import sys  # noqa: E402

from knotify import fastjson, keepalived, paths, spool  # noqa: E402
from knotify.errors import KeyFileError, ParseError  # noqa: E402

DEFAULT_ACK_TIMEOUT = 0.25
WIRE_VERSION = 1
USAGE = "usage: knotify-notify [-c FILE] WORDS...  (" + keepalived.USAGE + ")"


class Settings:
    """What the hook needs from the config: where to send, how long to wait, where to spool."""

    def __init__(self) -> None:
        rundir = paths.runtime_dir()
        self.endpoints: list[str] = [paths.control_endpoint(rundir)]
        self.ack_timeout = DEFAULT_ACK_TIMEOUT
        self.spool_dir = os.path.join(paths.state_dir(), "spool")
        self.host = os.uname().nodename
        self.curve: tuple[str, str] | None = None  # (router public key, own secret key)
        self.problems: list[str] = []
        self.runtime_dir = rundir
        #: Why the config file could not be read at all (then the defaults are used): the
        #: event may go to another router or spool than meant, so it carries the reason.
        self.config_error: str | None = None


def load_settings(config_path: str | None) -> Settings:
    """Settings from the config file (if any) and the environment.

    A broken config must not cost an event: problems are collected and reported,
    and the defaults are used for whatever could not be read.
    """
    settings = Settings()
    if config_path:
        data: dict[str, object] | None = None
        try:
            text = paths.read_config(config_path)
            from knotify import minitoml

            data = minitoml.read(text)
            if data is None:  # beyond the hook's plain subset: the real parser decides
                import tomllib

                data = tomllib.loads(text)
        except RecursionError:
            problem = "nested too deeply for the TOML parser"
        except ValueError as exc:  # unreadable, not UTF-8, not TOML
            problem = str(exc)
        except Exception as exc:  # whatever else: the event must still go out
            problem = f"{type(exc).__name__}: {exc}"
        if data is None:
            settings.config_error = f"config {printable(config_path)}: {printable(problem)}"
            settings.problems.append(settings.config_error + "; using defaults")
            data = {}
        try:
            _apply(settings, data)
        except Exception as exc:
            settings.problems.append(f"config {printable(config_path)}: {exc!r}; using "
                                     "defaults for the rest")
    from knotify.units import parse_duration

    env_timeout = os.environ.get("KNOTIFY_ACK_TIMEOUT")
    if env_timeout:
        try:
            settings.ack_timeout = parse_duration(env_timeout)
        except ValueError as exc:
            settings.problems.append(f"KNOTIFY_ACK_TIMEOUT: {exc}")
    env_endpoint = os.environ.get("KNOTIFY_ENDPOINT")
    if env_endpoint:
        settings.endpoints = [e for e in env_endpoint.split(",") if e]
    return settings


def _apply(settings: Settings, data: dict[str, object]) -> None:
    from knotify.units import parse_duration

    section = data.get("paths")
    rundir = paths.runtime_dir()
    statedir = paths.state_dir()
    if isinstance(section, dict):
        rundir = str(section.get("runtime_dir") or rundir)
        statedir = str(section.get("state_dir") or statedir)
    settings.runtime_dir = rundir
    settings.endpoints = [paths.control_endpoint(rundir)]
    settings.spool_dir = os.path.join(statedir, "spool")
    hook = data.get("hook")
    if not isinstance(hook, dict):
        return
    if isinstance(hook.get("endpoints"), list):
        # An empty list means the default socket, as in Config.client_endpoints.
        settings.endpoints = ([e for e in hook["endpoints"] if isinstance(e, str)]
                              or settings.endpoints)
    if "ack_timeout" in hook:
        try:
            settings.ack_timeout = parse_duration(hook["ack_timeout"])
        except ValueError as exc:
            settings.problems.append(f"[hook] ack_timeout: {exc}")
    if isinstance(hook.get("spool_dir"), str):
        settings.spool_dir = hook["spool_dir"]
    if isinstance(hook.get("host"), str) and hook["host"]:
        settings.host = hook["host"]
    curve = hook.get("curve")
    if isinstance(curve, dict):
        server, secret = curve.get("server_key"), curve.get("secret_key")
        if isinstance(server, str) and isinstance(secret, str):
            settings.curve = (server, secret)
        else:
            settings.problems.append("[hook.curve] needs server_key and secret_key paths")


def new_id() -> str:
    return os.urandom(16).hex()


_boot_id = ""


def boot_id() -> str:
    """This boot's id: a CLOCK_BOOTTIME value only means something within one boot."""
    global _boot_id
    if not _boot_id:
        try:
            with open("/proc/sys/kernel/random/boot_id") as fh:
                _boot_id = fh.read().strip()[:36]
        except OSError:
            _boot_id = "?"
    return _boot_id


def fork_clock() -> int:
    """When this process was forked, in CLOCK_BOOTTIME ns (10 ms steps); 0 if unknown.

    keepalived forks a change's hooks in order, but they may run late and in any order;
    the fork time (with the pid within one clock tick) is what orders them.
    """
    try:
        with open("/proc/self/stat", "rb") as fh:
            data = fh.read()
        start_ticks = int(data[data.rindex(b")") + 2 :].split()[19])
        return start_ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0


def stamp(
    fields: dict[str, object], settings: Settings, source: str, ts_ns: int,
    mono_ns: int | None = None,
) -> dict[str, object]:
    """A complete wire event: the parsed fields plus host, sequence, time and id.

    ``mono_ns`` is when the event happened on this host's boot clock; by default this
    process's fork time (a hook), with its pid to order hooks forked in one tick.
    """
    event: dict[str, object] = {
        "v": WIRE_VERSION,
        "id": new_id(),
        "host": settings.host,
        "seq": spool.next_seq(settings.spool_dir),
        "ts_ns": ts_ns,
        "source": source,
        "mono_ns": fork_clock() if mono_ns is None else mono_ns,
        "boot": boot_id(),
    }
    if mono_ns is None:
        event["pid"] = os.getpid()
    event.update(fields)
    return event


def deliver(event: dict[str, object], settings: Settings, send: bool = True) -> str:
    """Send one event to every router and wait for the acks; spool it for those that did
    not ack (:func:`knotify.spool.outboxes`). Returns "acked" if at least one router
    acked, else "spooled:PATH" (or "lost" if even the spool failed).

    ``send=False`` spools straight away (a caller that just saw the router fail).
    """
    if settings.config_error:
        # Sent and spooled with the defaults: the router that gets it says why.
        extra = event.get("extra")
        event["extra"] = {**(extra if isinstance(extra, dict) else {}),
                          "config_problem": settings.config_error[:1000]}
    payload = fastjson.dumps({"v": WIRE_VERSION, "op": "event", "event": event}).encode()
    deadline = time.monotonic() + settings.ack_timeout
    want = b'"id":"' + str(event["id"]).encode() + b'"'
    endpoints = settings.endpoints if send else []
    missed: list[str] = []
    for i, endpoint in enumerate(endpoints):
        # Every router gets the event (they dedupe by id). Each gets a fair share of the
        # time left, so a dead one cannot starve the ones after it.
        share = (deadline - time.monotonic()) / (len(endpoints) - i)
        reply = b""
        if share > 0:
            try:
                reply = _request(endpoint, payload, share, settings)
            except (OSError, ValueError, RuntimeError):
                pass
        # The router answers compact JSON; an ack names the event's id and says ok.
        if not (reply.startswith(b'{"v":1,"ok":true') and want in reply):
            missed.append(endpoint)
    acked = bool(endpoints) and len(missed) < len(endpoints)
    if acked and not missed:
        return "acked"
    # The routers that did not ack get it later from their outbox in the spool.
    paths: list[str] = []
    for folder in spool.outboxes(settings.spool_dir, settings.endpoints,
                                 missed if send else settings.endpoints):
        try:
            paths.append(spool.write(folder, event))
        except OSError as exc:
            _complain(f"router did not ack and the spool {folder} failed ({exc}); "
                      "event: " + fastjson.dumps(event))
    if acked:
        return "acked"
    return "spooled:" + paths[0] if paths else "lost"


def _request(endpoint: str, payload: bytes, timeout: float, settings: Settings) -> bytes:
    if settings.curve and endpoint.startswith("tcp://"):
        # CURVE needs libzmq: only remote hosts pay pyzmq's import cost.
        from knotify import transport

        try:
            keys = transport.load_client(*settings.curve)
        except KeyFileError as exc:
            _complain(f"[hook.curve]: {exc}")
            raise
        return transport.curve_request(endpoint, payload, timeout, keys)
    from knotify import zmtp

    return zmtp.request(endpoint, payload, timeout)


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes from argv that were not UTF-8 as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _complain(message: str) -> None:
    """One line on stderr and one in syslog (keepalived discards the hook's stderr).

    Never raises: a complaint must not cost the event.
    """
    message = printable(message)
    try:
        sys.stderr.write("knotify-notify: " + message + "\n")
    except Exception:
        pass
    try:
        import syslog

        syslog.openlog("knotify-notify", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, message[:2000])
    except Exception:
        pass


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
        _complain(problem)
    status = 0
    try:
        fields = keepalived.parse_argv(words)
    except ParseError as exc:
        _complain(f"{exc} (argv: {keepalived.safe_text(' '.join(args))[:300]!r})")
        fields = {"kind": "INVALID", "name": "", "state": "INVALID", "prio": None, "vs": "",
                  "form": "invalid", "error": str(exc)}
        status = 2
    # Clipped to what the router accepts (256 words of 4096 characters): an over-long argv
    # must not get the whole event refused, spooled and then quarantined.
    fields["argv"] = [word[:4096] for word in args[:256]]
    try:
        event = stamp(fields, settings, "hook", ts_ns)
        deliver(event, settings)
    except Exception as exc:  # never a traceback on keepalived's path
        _complain(f"internal error: {type(exc).__name__}: {exc}")
    return status


if __name__ == "__main__":
    sys.exit(main())
