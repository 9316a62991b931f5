"""Prometheus Alertmanager as a receiver: its settings, the alerts knotify posts, the POST.

apprise has no Alertmanager target, so a receiver with ``type = "alertmanager"``
is knotify's own sender. Its messages travel the same outbox and warm sender
workers as apprise receivers (attempts journaled per URL, retried with backoff,
429/Retry-After honoured); only the last step differs: :func:`deliver` (run by
the worker, as :func:`knotify.alerts.sender.deliver` is for apprise) posts a JSON
list of alerts to ``URL/api/v2/alerts`` of each Alertmanager URL, and writes the
same result-file records.

What an alert says is decided by pure functions here (:func:`labels_for`,
:func:`rfc3339`, :func:`post_body`); which alerts are active, resolved and
re-posted is :mod:`knotify.alerts.alertmanager_desk`'s, in the router.

Labels (an alert's identity in Alertmanager, so two routers that route the same
events post the *same* alert): ``alertname`` (``KnotifyVRRP`` for instances and
sync groups, ``KnotifyLVS`` for virtual and real servers, ``KnotifyCluster``,
``KnotifyPeer``), ``kind``, what it is about (``host`` + ``instance``; ``host`` +
``virtual_server`` [+ ``real_server``]; ``cluster``; ``host`` for a peer),
``state``, ``severity`` (the rule's, else ``critical`` for the bad states,
``warning`` for STOP/DELETED, ``info`` otherwise), ``rule`` when ``[alerts]
group_by`` names it, and the receiver's own ``labels``. Nothing that differs
between routers (event ids, the router that noticed a CLUSTER condition) is a
label: those are annotations.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from knotify.alerts.record import Result, parse_retry_after, start_ticks
from knotify.alerts.redact import MASK, scrub, url_id
from knotify.alerts.render import BAD_STATES
from knotify.schema import Table
from knotify.vocab import CLUSTER, DELETED, GROUP, INSTANCE, LVS_KINDS, PEER, RS, STOP, VS

KIND = "alertmanager"
API_PATH = "/api/v2/alerts"
#: A firing alert is posted valid for this many re-post intervals (its ``endsAt``):
#: should knotify stop re-posting (the router is gone), Alertmanager resolves it then.
VALID_REPOSTS = 4
DEFAULT_REPOST = 60.0
MAX_ERROR = 1000
ALERTNAMES = {INSTANCE: "KnotifyVRRP", GROUP: "KnotifyVRRP", VS: "KnotifyLVS",
              RS: "KnotifyLVS", CLUSTER: "KnotifyCluster", PEER: "KnotifyPeer"}
#: Labels knotify sets itself: a receiver's ``labels`` may not name them.
OWN_LABELS = frozenset({"alertname", "kind", "host", "instance", "virtual_server",
                        "real_server", "cluster", "state", "severity", "rule"})
SEVERITIES = ("critical", "warning", "info")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_LABELS = 30


@dataclass(slots=True, frozen=True)
class AMSettings:
    """What a ``type = "alertmanager"`` receiver adds to a receiver."""

    urls: tuple[str, ...] = field(repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    labels: tuple[tuple[str, str], ...] = ()
    repost_interval: float = DEFAULT_REPOST
    generator_url: str | None = None

    @property
    def valid_for(self) -> float:
        return self.repost_interval * VALID_REPOSTS

    def job(self) -> dict[str, Any]:
        """The sender's part of a job (secrets included: it goes to a worker's stdin)."""
        return {"kind": KIND, "urls": list(self.urls), "bearer_token": self.bearer_token,
                "labels": dict(self.labels), "valid_for": self.valid_for,
                "generator_url": self.generator_url}

    def shown(self) -> tuple[str, ...]:
        return tuple(shown_url(u) for u in self.urls)

    def secrets(self) -> frozenset[str]:
        found: set[str] = set()
        for url in self.urls:
            found |= url_secrets(url)
        if self.bearer_token:
            found.add(self.bearer_token)
        return frozenset(s for s in found if s)


# -- URLs and their secrets ----------------------------------------------------------------

def shown_url(raw: str) -> str:
    """``raw`` as logs and history show it: the password masked, query and fragment dropped."""
    try:
        parts = urlsplit(raw)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "?://..."
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None:
        netloc = f"{parts.username}{':' + MASK if parts.password is not None else ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def url_secrets(raw: str) -> set[str]:
    """The password of ``raw`` (as written and decoded) and its query values."""
    out: set[str] = set()
    try:
        parts = urlsplit(raw)
        if parts.password:
            out |= {parts.password, unquote(parts.password)}
        for piece in parts.query.split("&"):
            value = piece.partition("=")[2]
            if len(value) >= 4:
                out |= {value, unquote(value)}
    except ValueError:
        pass
    return out


def check_url(raw: str) -> str | None:
    """What is wrong with an Alertmanager URL, or None."""
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, found {shown_url(raw)!r}"
    if not parts.hostname:
        return f"no host in {shown_url(raw)!r}"
    if parts.query or parts.fragment:
        return "no query or fragment: give the Alertmanager's base URL (e.g. http://am1:9093)"
    if port == 0:
        return "port 0"
    if parts.path.rstrip("/").endswith(API_PATH):
        return f"give the base URL; knotify adds {API_PATH} itself"
    return None


# -- config ----------------------------------------------------------------------------------

def parse(r: Table, base_dir: str | None) -> AMSettings:
    """The Alertmanager keys of receiver table ``r`` (``type = "alertmanager"``)."""
    for key in ("config", "tags", "format"):
        if r.has(key):
            raise r.error(key, "is for apprise receivers; an alertmanager receiver has "
                          "urls, bearer_token(_file), labels, repost_interval, generator_url")
    urls = tuple(r.strings("urls", []))
    if not urls:
        raise r.error("urls", "an alertmanager receiver needs urls = [\"http://HOST:9093\", ...]"
                      " (one per Alertmanager of its cluster)")
    for i, url in enumerate(urls):
        problem = check_url(url)
        if problem is not None:
            raise r.error(f"urls[{i}]", scrub(problem, url_secrets(url)))
    if len(set(urls)) != len(urls):
        raise r.error("urls", "a URL is listed twice")
    token = r.opt_text("bearer_token")
    token_file = r.opt_text("bearer_token_file")
    if token is not None and token_file is not None:
        raise r.error("bearer_token_file", "set bearer_token or bearer_token_file, not both")
    if token_file is not None:
        if not os.path.isabs(token_file):
            if base_dir is None:
                raise r.error("bearer_token_file",
                              f"must be an absolute path, found {token_file!r}")
            token_file = os.path.join(base_dir, token_file)
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise r.error("bearer_token_file", f"cannot read {token_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if token is not None and (not token or any(c in token for c in "\r\n")):
        raise r.error("bearer_token_file" if token_file else "bearer_token",
                      "the token is empty or has a line break")
    table = r.table("labels")
    labels: list[tuple[str, str]] = []
    for name in table.data:
        value = table.raw(name)
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise table.error(name, "a label name is letters, digits and '_', not starting "
                              "with a digit or '__'")
        if name in OWN_LABELS:
            raise table.error(name, "knotify sets this label itself; known: "
                              + ", ".join(sorted(OWN_LABELS)))
        if not isinstance(value, str) or not value:
            raise table.error(name, "expected a non-empty string")
        labels.append((name, value))
    if len(labels) > MAX_LABELS:
        raise r.error("labels", f"at most {MAX_LABELS} labels")
    repost = r.duration("repost_interval", DEFAULT_REPOST)
    if not 1.0 <= repost <= 86400.0:
        raise r.error("repost_interval", "expected 1s .. 24h (Alertmanager resolves an alert "
                      "that is not re-posted; keep it well under its resolve_timeout)")
    generator = r.opt_text("generator_url")
    if generator is not None:
        try:
            parts = urlsplit(generator)
            good = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            good = False
        if not good:
            raise r.error("generator_url", "expected an http:// or https:// URL")
    return AMSettings(urls=urls, bearer_token=token, labels=tuple(labels),
                      repost_interval=repost, generator_url=generator)


# -- what is posted --------------------------------------------------------------------------

def rfc3339(ns: int) -> str:
    """``2024-05-01T12:00:01.123456Z``: RFC 3339 in UTC, as Alertmanager reads it."""
    seconds, rest = divmod(ns, 1_000_000_000)
    when = dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=rest // 1000)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def default_severity(state: str) -> str:
    if state in BAD_STATES:
        return "critical"
    if state in (STOP, DELETED):
        return "warning"
    return "info"


def labels_for(fields: Mapping[str, str], severity: str | None = None,
               static: Mapping[str, str] | None = None,
               group_by: Sequence[str] = ()) -> dict[str, str]:
    """The labels of the alert for one event's fields (see the module's docstring)."""
    kind = fields.get("kind", "")
    name = fields.get("name", "")
    host = fields.get("host", "")
    state = fields.get("state", "")
    labels = {"alertname": ALERTNAMES.get(kind, "Knotify" + kind.capitalize()), "kind": kind}
    if kind == CLUSTER:
        labels["cluster"] = name  # its host is the router that noticed: not the alert's
    elif kind == PEER:
        labels["host"] = name
    elif kind in LVS_KINDS:
        labels["host"] = host
        labels["virtual_server"] = fields.get("vs", "") or name
        if kind == RS:
            labels["real_server"] = name
    else:
        labels["host"] = host
        labels["instance"] = name
    labels["state"] = state
    labels["severity"] = severity or default_severity(state)
    if "rule" in group_by:
        labels["rule"] = fields.get("rule", "")
    for key, value in (static or {}).items():
        labels.setdefault(key, value)
    # An empty value is no label in Alertmanager: leave it out rather than send it.
    return {k: v for k, v in labels.items() if v}


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable name for a label set (knotify's, not Alertmanager's own hash)."""
    text = json.dumps(sorted(labels.items()), ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def post_body(alerts: Sequence[Mapping[str, Any]], now_ns: int, valid_for: float,
              generator_url: str | None = None) -> list[dict[str, Any]]:
    """The JSON list posted: a firing alert (no ``ends_ns``) is valid for ``valid_for``
    seconds from now; a resolved one carries its end. Times are RFC 3339."""
    out = []
    for alert in alerts:
        starts = int(alert["starts_ns"])
        ends = alert.get("ends_ns")
        end = int(ends) if ends is not None else now_ns + int(valid_for * 1e9)
        entry: dict[str, Any] = {
            "labels": dict(alert["labels"]),
            "annotations": dict(alert.get("annotations") or {}),
            "startsAt": rfc3339(min(starts, end)),
            "endsAt": rfc3339(end),
        }
        if generator_url:
            entry["generatorURL"] = generator_url
        out.append(entry)
    return out


def test_alert(job: Mapping[str, Any], now_ns: int) -> list[dict[str, Any]]:
    """What ``knotify test-alert`` posts: one alert, valid for five minutes."""
    labels = {"alertname": "KnotifyTest", "host": socket.gethostname(), "severity": "info",
              **dict(job.get("labels") or {})}
    return [{"labels": labels, "starts_ns": now_ns, "ends_ns": now_ns + 300 * 10**9,
             "annotations": {"summary": str(job.get("title", "")),
                             "description": str(job.get("body", ""))}}]


# -- the POST (in a sender worker) -------------------------------------------------------------

def _request(raw: str, body: bytes, token: str | None) -> urllib.request.Request:
    parts = urlsplit(raw)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + API_PATH, "", ""))
    headers = {"Content-Type": "application/json", "User-Agent": "knotify"}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def post(raw: str, body: bytes, token: str | None, timeout: float,
         secrets: set[str]) -> tuple[bool, str, str, dict[str, Any]]:
    """One POST: (ok, status, error, {"http": code, "retry_after": s} on failure)."""
    try:
        request = _request(raw, body, token)
        with urllib.request.urlopen(request, timeout=max(0.1, timeout)) as response:
            response.read(65536)
            return True, "SUCCESS", "", {}
    except urllib.error.HTTPError as exc:
        code = exc.code
        try:
            text = exc.read(2000).decode("utf-8", "replace").strip()
        except Exception:  # a body cut short: the status says enough
            text = ""
        extra: dict[str, Any] = {"http": code}
        if code in (429, 503):
            after = parse_retry_after(exc.headers.get("Retry-After"))
            if after is not None:
                extra["retry_after"] = after
        error = f"HTTP {code} {exc.reason}" + (f": {' '.join(text.split())}" if text else "")
        return False, "FAILURE", scrub(error, secrets)[:MAX_ERROR], extra
    except TimeoutError:
        return False, "TIMEOUT", f"no answer within {timeout:.1f}s", {}
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            return False, "TIMEOUT", f"no answer within {timeout:.1f}s", {}
        text = getattr(reason, "strerror", None) or str(reason)
        return False, "FAILURE", scrub(f"cannot connect: {text}", secrets)[:MAX_ERROR], {}
    except Exception as exc:  # a malformed answer, an odd URL: say what it was
        return False, "ERROR", scrub(f"{type(exc).__name__}: {exc}", secrets)[:MAX_ERROR], {}


def deliver(job: dict[str, Any], out: Result) -> bool:
    """Post the job's alerts to each Alertmanager URL not reached yet, recording each step
    in ``out`` as apprise deliveries do (:func:`knotify.alerts.sender.deliver`, which
    calls this one for a job of ``kind`` alertmanager)."""
    out.write({"t": "start", "pid": os.getpid(), "ticks": start_ticks(), "ns": time.time_ns()})
    timeout = float(job.get("timeout", 30.0))
    deadline = time.monotonic() + timeout
    urls = [u for u in job.get("urls", []) if isinstance(u, str)]
    token = job.get("bearer_token") or None
    secrets: set[str] = set()
    for url in urls:
        secrets |= url_secrets(url)
    if token:
        secrets.add(str(token))
    out.write({"t": "plan", "urls": [{"id": url_id(u), "url": shown_url(u)} for u in urls],
               "problems": []})
    now = time.time_ns()
    alerts = job.get("alerts")
    if alerts is None:
        alerts = test_alert(job, now)
    body = json.dumps(post_body(alerts, now, float(job.get("valid_for", 240.0)),
                                job.get("generator_url")), ensure_ascii=False).encode()
    skip = set(job.get("skip", []))
    for url in urls:
        ident = url_id(url)
        if ident in skip:
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.write({"t": "url", "id": ident, "url": shown_url(url), "ok": False,
                       "status": "TIMEOUT", "error": "no time left in this attempt",
                       "elapsed": 0.0})
            continue
        out.write({"t": "send", "id": ident})
        started = time.monotonic()
        ok, status, error, http = post(url, body, token, remaining, secrets)
        out.write({"t": "url", "id": ident, "url": shown_url(url), "ok": ok, "status": status,
                   "error": error, "elapsed": round(time.monotonic() - started, 3), **http})
    out.write({"t": "end"})
    return False
