"""The one way to the router for everything outside it: the hook, the FIFO reader,
resync, ``knotify send``, the agent, the CLI and the web pages.

:class:`Settings` says where the router is and how to reach it (read from ``[paths]``
and ``[hook]``, leniently: a mistake elsewhere in the config must not lock a client out;
parsed with tomllib once per change of the file, :mod:`knotify.confcache`).
:func:`exchange` carries one request and its answer over the endpoint's transport:
CURVE through pyzmq for ``tcp://`` when ``[hook.curve]`` is set, otherwise knotify's own
ZMTP peer (:mod:`knotify.zmtp`, no pyzmq). On top of it, :func:`deliver` sends an event
(ack or spool) and :func:`request` / :func:`ask` send an op and return its answer.

On the hook's path: standard library only; ``json``, ``tomllib`` and pyzmq are imported
only by the calls that need them.
"""

from __future__ import annotations

import os
import sys
import time

from knotify import confcache, fastjson, paths, spool
from knotify.errors import KeyFileError, RouterRefused, RouterUnavailable
from knotify.wire import WIRE_VERSION, is_ack

TYPE_CHECKING = False  # typing costs the hook milliseconds; mypy reads this block anyway
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ACK_TIMEOUT = 0.25
#: How long an op (``knotify status`` ...) waits for its answer by default.
DEFAULT_TIMEOUT = 5.0


class Settings:
    """What a client needs from the config: where to send, how long to wait, where to spool."""

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
            data = confcache.tables(config_path)
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


# -- one request, one answer -----------------------------------------------------------


def exchange(endpoint: str, payload: bytes, timeout: float, settings: Settings) -> bytes:
    """Send one request to ``endpoint`` and return the answer's frame, within ``timeout``.

    Raises OSError (nobody there, no answer in time: TimeoutError, a broken peer:
    ZmtpError), ValueError (a malformed endpoint) or KeyFileError (a CURVE key file that
    cannot be used).
    """
    if settings.curve and endpoint.startswith("tcp://"):
        # CURVE needs libzmq: only clients of a remote router pay pyzmq's import cost.
        from knotify import transport

        keys = transport.load_client(*settings.curve)
        return transport.curve_request(endpoint, payload, timeout, keys)
    from knotify import zmtp

    return zmtp.request(endpoint, payload, timeout)


def message(op: str, **fields: Any) -> bytes:
    """A request on the wire: the version, the op and its fields, as compact JSON."""
    return fastjson.dumps({"v": WIRE_VERSION, "op": op, **fields}).encode()


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyFileError):
        return f"[hook.curve]: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def ask(settings: Settings, endpoint: str, payload: bytes,
        timeout: float | None = None) -> dict[str, Any]:
    """Send a request (:func:`message`) to one router; its answer, a JSON object.

    Raises RouterUnavailable with the reason (without the endpoint) when no answer came
    (within ``timeout``, by default the ack timeout) or the answer is not a JSON object.
    """
    try:
        raw = exchange(endpoint, payload, settings.ack_timeout if timeout is None else timeout,
                       settings)
    except (OSError, ValueError) as exc:
        raise RouterUnavailable(_reason(exc)) from None
    import json

    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise RouterUnavailable("answered something that is not a JSON object")
    return answer


def request(settings: Settings, op: str, timeout: float = DEFAULT_TIMEOUT,
            **fields: Any) -> dict[str, Any]:
    """Send ``op`` to the first router that answers; raise RouterUnavailable or
    RouterRefused with the reason.

    ``settings`` come from :func:`load_settings`, which reads only where the router is:
    a config with a mistake elsewhere must not lock the CLI out.
    """
    payload = message(op, **fields)
    errors = []
    for endpoint in settings.endpoints:
        try:
            answer = ask(settings, endpoint, payload, timeout)
        except RouterUnavailable as exc:
            errors.append(f"{endpoint}: {exc}")
            continue
        if not answer.get("ok"):
            raise RouterRefused(str(answer.get("error", "the router refused the request")))
        return answer
    raise RouterUnavailable(
        "no answer from the router (" + "; ".join(errors) + "). Is `knotify run` running "
        "with the same config?"
    )


# -- events ------------------------------------------------------------------------------


def deliver(event: dict[str, object], settings: Settings, send: bool = True) -> str:
    """Send one stamped event to every router and wait for the acks; spool it for those
    that did not ack (:func:`knotify.spool.outboxes`). Returns "acked" if at least one
    router acked, else "spooled:PATH" (or "lost" if even the spool failed).

    ``send=False`` spools straight away (a caller that just saw the router fail).
    """
    if settings.config_error:
        # Sent and spooled with the defaults: the router that gets it says why.
        extra = event.get("extra")
        event["extra"] = {**(extra if isinstance(extra, dict) else {}),
                          "config_problem": settings.config_error[:1000]}
    payload = message("event", event=event)
    deadline = time.monotonic() + settings.ack_timeout
    ident = str(event["id"])
    endpoints = settings.endpoints if send else []
    missed: list[str] = []
    for i, endpoint in enumerate(endpoints):
        # Every router gets the event (they dedupe by id). Each gets a fair share of the
        # time left, so a dead one cannot starve the ones after it.
        share = (deadline - time.monotonic()) / (len(endpoints) - i)
        reply = b""
        if share > 0:
            try:
                reply = exchange(endpoint, payload, share, settings)
            except KeyFileError as exc:
                complain(f"[hook.curve]: {exc}")
            except (OSError, ValueError):
                pass
        if not is_ack(reply, ident):
            missed.append(endpoint)
    acked = bool(endpoints) and len(missed) < len(endpoints)
    if acked and not missed:
        return "acked"
    # The routers that did not ack get it later from their outbox in the spool.
    written: list[str] = []
    for folder in spool.outboxes(settings.spool_dir, settings.endpoints,
                                 missed if send else settings.endpoints):
        try:
            written.append(spool.write(folder, event))
        except OSError as exc:
            complain(f"router did not ack and the spool {folder} failed ({exc}); "
                     "event: " + fastjson.dumps(event))
    if acked:
        return "acked"
    return "spooled:" + written[0] if written else "lost"


# -- saying what went wrong without a logger ------------------------------------------------


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes from argv that were not UTF-8 as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def complain(text: str) -> None:
    """One line on stderr and one in syslog (keepalived discards its scripts' stderr).

    For the clients keepalived runs (the hook, ``knotify fifo``). Never raises: a
    complaint must not cost the event.
    """
    text = printable(text)
    try:
        sys.stderr.write("knotify-notify: " + text + "\n")
    except Exception:
        pass
    try:
        import syslog

        syslog.openlog("knotify-notify", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, text[:2000])
    except Exception:
        pass
