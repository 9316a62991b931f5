"""One delivery attempt, in its own process: ``python -m knotify.alerts.sender``.

The router never imports apprise. It starts this module in a new session for
each attempt, writes the job (message, receiver URLs, URLs already reached) to
its stdin and kills the whole process group at the attempt's timeout — a real
bound, which apprise's ``notify()`` alone does not give, and a plugin that
crashes or hangs cannot take the router with it.

The sender delivers URL by URL and appends one JSON line per step to the result
file as each completes (``O_APPEND``, so a line is in the kernel the moment it
is written)::

    {"t": "start", "pid": 1234}
    {"t": "plan", "urls": [{"id": ..., "url": "mailto://user:****@host"}], "problems": [...]}
    {"t": "send", "id": ...}
    {"t": "url", "id": ..., "url": ..., "ok": true, "status": "SUCCESS", "error": "", ...}
    {"t": "end"}

A router that was killed mid-attempt reads the file after its restart and never
sends again to a URL that already succeeded. URLs are shown only in apprise's
privacy form (query dropped) and every error text is scrubbed of the secrets
of the URLs involved.

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
import time
from typing import Any

from knotify.alerts.failure import explain
from knotify.alerts.redact import scheme, scrub, secret_tokens, short_url, url_id

MAX_ERROR = 1000


class _Result:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.fchmod(self.fd, 0o600)  # whatever the umask: it names receivers and errors

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, ensure_ascii=True) + "\n").encode())


def _asset(apprise: Any) -> Any:
    try:
        return apprise.AppriseAsset(app_id="knotify", app_desc="knotify alerts",
                                    storage_mode="memory")
    except Exception:  # older apprise without some of these options
        return apprise.AppriseAsset()


def _captured(text: str, secrets: set[str]) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return scrub("; ".join(dict.fromkeys(lines)), secrets)[-MAX_ERROR:]


class _Service:
    __slots__ = ("id", "secrets", "service", "shown")

    def __init__(self, ident: str, shown: str, service: Any, secrets: set[str]) -> None:
        self.id = ident
        self.shown = shown
        self.service = service
        self.secrets = secrets


def resolve(apprise: Any, asset: Any, urls: list[str], config: str | None,
            tags: list[str]) -> tuple[list[_Service], list[dict[str, str]]]:
    """The services a receiver names, in order, and what could not be loaded (redacted)."""
    services: list[_Service] = []
    problems: list[dict[str, str]] = []
    for raw in urls:
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:
            service = apprise.Apprise.instantiate(raw, asset=asset)
        if service is None:
            problems.append({"id": url_id(raw), "url": scheme(raw) + "...", "error": _captured(
                log.getvalue(), secret_tokens(raw)) or "apprise does not accept this URL"})
            continue
        privacy = service.url(privacy=True)
        services.append(_Service(url_id(raw), short_url(privacy), service,
                                 secret_tokens(raw, privacy)))
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
              remaining: float) -> tuple[bool, str, str]:
    holder = apprise.Apprise(asset=asset)
    holder.add(svc.service)
    kwargs: dict[str, Any] = {
        "body": job.get("body") or " ", "title": job.get("title", ""),
        "notify_type": job.get("type", "info"), "body_format": job.get("format", "text"),
    }
    # Debug level: apprise says why a connection failed (DNS, refused, TLS) only there.
    with apprise.LogCapture(level=logging.DEBUG, fmt="%(levelname)s %(message)s") as log:
        try:
            try:
                result = holder.notify(**kwargs, timeout=max(0.1, remaining))
            except TypeError:  # apprise before 2.x: no per-call timeout
                result = holder.notify(**kwargs)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            return False, "ERROR", scrub(explain([text], []), svc.secrets)[:MAX_ERROR]
    ok = bool(result)
    status = getattr(getattr(result, "status", None), "name", "SUCCESS" if ok else "FAILURE")
    error = "" if ok else (_failure(log.getvalue(), svc.secrets)
                           or f"apprise reported {status.lower()}")
    return ok, str(status), error


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


def deliver(job: dict[str, Any], result_path: str) -> None:
    out = _Result(result_path)
    out.write({"t": "start", "pid": os.getpid()})
    timeout = float(job.get("timeout", 30.0))
    # A bound of our own as well: if the router is gone, nobody else enforces it.
    signal.alarm(max(1, math.ceil(timeout) + 2))
    deadline = time.monotonic() + timeout
    import apprise

    asset = _asset(apprise)
    services, problems = resolve(apprise, asset, list(job.get("urls", [])),
                                 job.get("config"), list(job.get("tags", [])))
    out.write({"t": "plan", "urls": [{"id": s.id, "url": s.shown} for s in services],
               "problems": problems})
    skip = set(job.get("skip", []))
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
        ok, status, error = _send_one(apprise, asset, svc, job, remaining)
        out.write({"t": "url", "id": svc.id, "url": svc.shown, "ok": ok, "status": status,
                   "error": error, "elapsed": round(time.monotonic() - started, 3)})
    out.write({"t": "end"})


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
    deliver(request, args[1])
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # apprise may leave abandoned worker threads behind after a per-call timeout:
    # they must not keep this process (and the attempt) alive.
    os._exit(code)
