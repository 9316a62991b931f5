"""Delivering one message to one receiver's URLs with apprise, and writing what happened.

The router never imports apprise. Its warm sender workers
(:mod:`knotify.alerts.worker`) and ``knotify test-alert`` (this module run as
``python -m knotify.alerts.sender --result PATH``, one job on stdin) call
:func:`deliver`; the router bounds every attempt by killing the whole process
group at its timeout — a real bound, which apprise's ``notify()`` alone does
not give — so a plugin that crashes or hangs cannot take the router with it.

:func:`deliver` goes URL by URL and appends one JSON line per step to the
result file as each completes (``O_APPEND``, so a line is in the kernel the
moment it is written)::

    {"t": "start", "pid": 1234, "ticks": 5678, "ns": 1700000000000000000}
    {"t": "plan", "urls": [{"id": ..., "url": "mailto://user:****@host"}], "problems": [...]}
    {"t": "send", "id": ...}
    {"t": "url", "id": ..., "url": ..., "ok": false, "status": "FAILURE", "error": "...",
     "elapsed": 0.01, "http": 429, "retry_after": 30.0}
    {"t": "end"}

A router that was killed mid-attempt reads the file after its restart and never
sends again to a URL that already succeeded. URLs are shown only in apprise's
privacy form (query dropped) and every error text is scrubbed of the secrets
of the URLs involved.

apprise reports a failed HTTP delivery as ``False`` and a log line; it keeps the
response's status and headers to itself. So :func:`watch_http` wraps
``requests.Session.send`` (every apprise HTTP plugin goes through ``requests``)
to note the status and ``Retry-After`` of each response: a 429 ("slow down")
or a 503 with ``Retry-After`` is recorded with the URL's outcome, and the router
backs the receiver off accordingly.

``--check`` validates receivers for ``knotify check-config``: JSON in on stdin,
per-URL verdicts and privacy forms out on stdout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from knotify.alerts.failure import explain
from knotify.alerts.record import Result, parse_retry_after, start_ticks
from knotify.alerts.redact import scheme, scrub, secret_tokens, short_url, url_id

MAX_ERROR = 1000
#: Seconds the router allows beyond a job's timeout before it kills the process group.
GRACE = 2.0


class _Responses:
    """The HTTP responses apprise's plugins got, noted by :func:`watch_http`'s wrapper."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[int, str | None]] = []

    def take(self) -> list[tuple[int, str | None]]:
        with self.lock:
            seen, self.seen = self.seen, []
        return seen


_responses = _Responses()
#: The wrappers :func:`watch_http` put in place (so it wraps only once).
_wrappers: set[Any] = set()


def watch_http() -> None:
    """Note the status and Retry-After of every response ``requests`` returns (once per process)."""
    try:
        import requests
    except ImportError:  # apprise without requests: nothing to watch
        return
    original = requests.Session.send
    if original in _wrappers:
        return

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        response = original(self, request, **kwargs)
        try:
            note = (int(response.status_code), response.headers.get("Retry-After"))
        except Exception:  # an odd response object: nothing to note
            return response
        with _responses.lock:
            _responses.seen.append(note)
        return response

    _wrappers.add(send)
    requests.Session.send = send  # type: ignore[method-assign]


def slow_down(responses: list[tuple[int, str | None]]) -> dict[str, Any]:
    """What the last failed HTTP response says: its status, and for 429/503 Retry-After."""
    failed = [r for r in responses if r[0] >= 400]
    if not failed:
        return {}
    status, header = failed[-1]
    out: dict[str, Any] = {"http": status}
    if status in (429, 503):
        after = parse_retry_after(header)
        if after is not None:
            out["retry_after"] = after
    return out


_assets: list[Any] = []


def _asset(apprise: Any) -> Any:
    if not _assets:
        try:
            _assets.append(apprise.AppriseAsset(app_id="knotify", app_desc="knotify alerts",
                                                storage_mode="memory"))
        except Exception:  # older apprise without some of these options
            _assets.append(apprise.AppriseAsset())
    return _assets[0]


def _captured(text: str, secrets: set[str]) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return scrub("; ".join(dict.fromkeys(lines)), secrets)[-MAX_ERROR:]


class _Service:
    __slots__ = ("holder", "id", "secrets", "service", "shown")

    def __init__(self, ident: str, shown: str, service: Any, secrets: set[str],
                 holder: Any = None) -> None:
        self.id = ident
        self.shown = shown
        self.service = service
        self.secrets = secrets
        self.holder = holder


#: What a warm worker already made of a receiver URL (apprise's plugin object, ready to
#: send, its privacy form and secrets), by the URL, most recently used last: the next
#: message to the same URL skips parsing and set-up (about half of a job's CPU), and
#: the plugin's own throttling carries over from one message to the next.
_known: OrderedDict[str, _Service] = OrderedDict()
KNOWN_MAX = 64


def _service(apprise: Any, asset: Any, raw: str) -> _Service | dict[str, str]:
    """The service for URL ``raw`` (made once per process), or what went wrong."""
    known = _known.get(raw)
    if known is not None:
        _known.move_to_end(raw)
        return known
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:
        service = apprise.Apprise.instantiate(raw, asset=asset)
    if service is None:
        return {"id": url_id(raw), "url": scheme(raw) + "...", "error": _captured(
            log.getvalue(), secret_tokens(raw)) or "apprise does not accept this URL"}
    privacy = service.url(privacy=True)
    holder = apprise.Apprise(asset=asset)
    holder.add(service)
    known = _Service(url_id(raw), short_url(privacy), service, secret_tokens(raw, privacy),
                     holder)
    _known[raw] = known
    while len(_known) > KNOWN_MAX:
        _known.popitem(last=False)
    return known


def resolve(apprise: Any, asset: Any, urls: list[str], config: str | None,
            tags: list[str]) -> tuple[list[_Service], list[dict[str, str]]]:
    """The services a receiver names, in order, and what could not be loaded (redacted)."""
    services: list[_Service] = []
    problems: list[dict[str, str]] = []
    for raw in urls:
        got = _service(apprise, asset, raw)
        if isinstance(got, dict):
            problems.append(got)
        else:  # a copy: the id may get a suffix below
            services.append(_Service(got.id, got.shown, got.service, got.secrets, got.holder))
    if config:
        ident = "config:" + config
        if not os.access(config, os.R_OK):
            problems.append({"id": ident, "url": config,
                             "error": f"cannot read the apprise config file {config}"})
        else:
            loaded = apprise.AppriseConfig(asset=asset)
            holder = apprise.Apprise(asset=asset)
            with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:
                loaded.add(config)
                holder.add(loaded)
                found = list(holder.find(tag=tags if tags else apprise.common.MATCH_ALL_TAG))
            secrets: set[str] = set()
            for service in found:
                raw = service.url(privacy=False)
                privacy = service.url(privacy=True)
                tokens = secret_tokens(raw, privacy)
                secrets |= tokens
                services.append(_Service(url_id(raw), short_url(privacy), service, tokens))
            complaint = _captured(log.getvalue(), secrets)
            if not found:
                what = f" with tag(s) {', '.join(tags)}" if tags else ""
                problems.append({"id": ident, "url": config, "error":
                                 f"no service{what} in {config}"
                                 + (f": {complaint}" if complaint else "")})
            elif complaint:
                problems.append({"id": ident + ":load", "url": config,
                                 "error": f"some entries of {config} did not load: {complaint}"})
    seen: dict[str, int] = {}
    for svc in services:
        count = seen.get(svc.id, 0) + 1
        seen[svc.id] = count
        if count > 1:
            svc.id = f"{svc.id}#{count}"
    return services, problems


def _send_one(apprise: Any, asset: Any, svc: _Service, job: dict[str, Any],
              remaining: float) -> tuple[bool, str, str, dict[str, Any]]:
    holder = svc.holder
    if holder is None:
        holder = apprise.Apprise(asset=asset)
        holder.add(svc.service)
    kwargs: dict[str, Any] = {
        "body": job.get("body") or " ", "title": job.get("title", ""),
        "notify_type": job.get("type", "info"), "body_format": job.get("format", "text"),
    }
    _responses.take()
    # Debug level: apprise says why a connection failed (DNS, refused, TLS) only there.
    with apprise.LogCapture(level=logging.DEBUG, fmt="%(levelname)s %(message)s") as log:
        try:
            try:
                result = holder.notify(**kwargs, timeout=max(0.1, remaining))
            except TypeError:  # apprise before 2.x: no per-call timeout
                result = holder.notify(**kwargs)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            return False, "ERROR", scrub(explain([text], []), svc.secrets)[:MAX_ERROR], {}
    ok = bool(result)
    status = getattr(getattr(result, "status", None), "name", "SUCCESS" if ok else "FAILURE")
    error = "" if ok else (_failure(log.getvalue(), svc.secrets)
                           or f"apprise reported {status.lower()}")
    return ok, str(status), error, ({} if ok else slow_down(_responses.take()))


def _failure(captured: str, secrets: set[str]) -> str:
    """Why a URL failed, from apprise's log: its warnings plus the cause in its debug lines."""
    said: list[str] = []
    details: list[str] = []
    for line in captured.splitlines():
        level, _, message = line.partition(" ")
        if level in ("WARNING", "ERROR", "CRITICAL"):
            said.append(message)
        elif level == "DEBUG" and message.startswith(("Socket Exception", "Response Details",
                                                      "SMTP", "Exception")):
            details.append(message)
    return scrub(explain(said, details), secrets)[-MAX_ERROR:]


def deliver(job: dict[str, Any], out: Result) -> bool:
    """Send ``job`` URL by URL, recording each step in ``out``.

    Returns whether apprise gave up waiting on a URL (status TIMEOUT): its thread may
    still be running, so a warm worker must not take another job after this one.
    """
    if job.get("kind") == "alertmanager":
        # knotify's own sender; imported only for such a job (apprise workers need none of it)
        from knotify.alerts import alertmanager

        return alertmanager.deliver(job, out)
    out.write({"t": "start", "pid": os.getpid(), "ticks": start_ticks(), "ns": time.time_ns()})
    timeout = float(job.get("timeout", 30.0))
    deadline = time.monotonic() + timeout
    import apprise

    asset = _asset(apprise)
    services, problems = resolve(apprise, asset, list(job.get("urls", [])),
                                 job.get("config"), list(job.get("tags", [])))
    out.write({"t": "plan", "urls": [{"id": s.id, "url": s.shown} for s in services],
               "problems": problems})
    skip = set(job.get("skip", []))
    abandoned = False
    for svc in services:
        if svc.id in skip:
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.write({"t": "url", "id": svc.id, "url": svc.shown, "ok": False,
                       "status": "TIMEOUT", "error": "no time left in this attempt",
                       "elapsed": 0.0})
            continue
        out.write({"t": "send", "id": svc.id})
        started = time.monotonic()
        ok, status, error, http = _send_one(apprise, asset, svc, job, remaining)
        abandoned |= status == "TIMEOUT"
        out.write({"t": "url", "id": svc.id, "url": svc.shown, "ok": ok, "status": status,
                   "error": error, "elapsed": round(time.monotonic() - started, 3), **http})
    out.write({"t": "end"})
    return abandoned


def alarm_for(timeout: float) -> int:
    """Seconds for a sender's own alarm: past the router's kill, for when no router is left."""
    return max(1, math.ceil(timeout + GRACE) + 2)


def check(request: dict[str, Any]) -> dict[str, Any]:
    """Per receiver: each URL's verdict and privacy form, and the config file's services."""
    import apprise

    asset = _asset(apprise)
    answer: dict[str, Any] = {}
    for name, spec in request.get("receivers", {}).items():
        urls = []
        for raw in spec.get("urls", []):
            services, problems = resolve(apprise, asset, [raw], None, [])
            if services:
                urls.append({"ok": True, "url": services[0].shown,
                             "secrets": sorted(services[0].secrets)})
            else:
                urls.append({"ok": False, "url": problems[0]["url"],
                             "error": problems[0]["error"]})
        entry: dict[str, Any] = {"urls": urls}
        if spec.get("config"):
            services, problems = resolve(apprise, asset, [], spec["config"],
                                         list(spec.get("tags", [])))
            entry["config"] = {"services": [s.shown for s in services],
                               "problems": [p["error"] for p in problems]}
        answer[name] = entry
    return answer


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        request = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        print(f"knotify sender: the job on stdin is not JSON: {exc}", file=sys.stderr)
        return 2
    if args[:1] == ["--check"]:
        print(json.dumps(check(request)))
        return 0
    if len(args) != 2 or args[0] != "--result":
        print("usage: python -m knotify.alerts.sender --result PATH | --check", file=sys.stderr)
        return 2
    # A bound of our own as well: if the router is gone, nobody else enforces it.
    signal.alarm(alarm_for(float(request.get("timeout", 30.0))))
    watch_http()
    deliver(request, Result.create(args[1]))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # apprise may leave abandoned worker threads behind after a per-call timeout:
    # they must not keep this process (and the attempt) alive.
    os._exit(code)
