"""What one delivery attempt did: its result file, its verdict, and adopting it after a crash.

A sender worker (:mod:`knotify.alerts.worker`, started by
:mod:`knotify.alerts.pool`) writes the attempt's result file URL by URL;
:func:`verdict` turns that into the attempt's outcome. The worker holds an
``flock`` on the file while the job runs, so a router started after a crash
knows an attempt is still under way (:func:`locked`), waits for it
(:func:`watch_locked`, killing the worker's process group at the attempt's
deadline) and then reads what it did: the URLs it reached are never sent to
twice. A one-shot sender of an older knotify is recognised by its command line
(:func:`sender_alive`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from knotify.alerts.record import start_ticks
from knotify.alerts.sender import GRACE
from knotify.vocab import FAILED, INTERRUPTED, OK, TIMEOUT

__all__ = ["GRACE", "SENDER_MODULE", "Results", "Verdict", "locked", "read_results", "verdict"]

SENDER_MODULE = "knotify.alerts.sender"


@dataclass(slots=True)
class Results:
    """What a result file says."""

    pid: int | None = None
    ticks: int | None = None
    #: When the sender began the job (wall clock, ns).
    started_ns: int | None = None
    planned: list[dict[str, str]] | None = None
    problems: list[dict[str, str]] = field(default_factory=list)
    urls: dict[str, dict[str, Any]] = field(default_factory=dict)
    sending: str | None = None
    ended: bool = False


def parse_results(text: str) -> Results:
    """Tolerant: a line cut short by a kill is ignored."""
    res = Results()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        kind = rec.get("t")
        if kind == "start" and isinstance(rec.get("pid"), int):
            res.pid = rec["pid"]
            res.ticks = rec["ticks"] if isinstance(rec.get("ticks"), int) else None
            res.started_ns = rec["ns"] if isinstance(rec.get("ns"), int) else None
        elif kind == "plan":
            res.planned = [u for u in rec.get("urls", []) if isinstance(u, dict)]
            res.problems = [p for p in rec.get("problems", []) if isinstance(p, dict)]
        elif kind == "send":
            res.sending = str(rec.get("id"))
        elif kind == "url":
            ident = str(rec.get("id"))
            res.urls[ident] = rec
            if res.sending == ident:
                res.sending = None
        elif kind == "end":
            res.ended = True
    return res


def read_results(path: str | None) -> Results:
    if not path:
        return Results()
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_results(fh.read())
    except OSError:
        return Results()


@dataclass(slots=True)
class Verdict:
    status: str
    done: list[str]
    urls: list[dict[str, Any]]
    error: str
    #: A URL answered "slow down" (HTTP 429, or 503 with Retry-After).
    slow_down: bool = False
    #: The longest Retry-After (seconds) such an answer asked for, if any said.
    retry_after: float | None = None


def verdict(res: Results, done_before: list[str], timed_out: bool, note: str = "",
            interrupted: bool = False) -> Verdict:
    """The attempt's outcome: which URLs are now reached, and what failed and why."""
    done = list(done_before)
    if res.planned is None:
        if interrupted:
            return Verdict(INTERRUPTED, done, [], note or "the router stopped before the "
                           "sender loaded the receiver")
        return Verdict(TIMEOUT if timed_out else FAILED, done, [],
                       note or "the sender stopped before it loaded the receiver's URLs")
    outcomes: list[dict[str, Any]] = []
    for problem in res.problems:
        outcomes.append({"url": problem.get("url", "?"), "ok": False, "status": "INVALID",
                         "error": problem.get("error", "")})
    stopped = ("the attempt timed out" if timed_out
               else "the router stopped" if interrupted else "the sender stopped")
    for entry in res.planned:
        ident = entry.get("id", "")
        if ident in done_before:
            continue
        rec = res.urls.get(ident)
        if rec is not None:
            ok = bool(rec.get("ok"))
            outcomes.append({"url": entry.get("url", "?"), "ok": ok,
                             "status": str(rec.get("status", "")),
                             "error": str(rec.get("error", "")),
                             "elapsed": rec.get("elapsed")})
            if ok:
                done.append(ident)
        elif res.sending == ident:
            outcomes.append({"url": entry.get("url", "?"), "ok": False, "status": "UNKNOWN",
                             "error": f"{stopped} while sending; outcome unknown, sent again"})
        else:
            outcomes.append({"url": entry.get("url", "?"), "ok": False, "status": "NOT_TRIED",
                             "error": f"not tried: {stopped}"})
    missing = [e for e in res.planned if e.get("id") not in done] + res.problems
    errors = [f"{o['url']}: {o['error']}" for o in outcomes if not o["ok"]]
    if note and missing:
        errors.append(note)
    if not missing:
        return Verdict(OK, done, outcomes, "")
    timeouts = [o for o in outcomes if not o["ok"]]
    if timed_out or (timeouts and all(o["status"] == "TIMEOUT" for o in timeouts)):
        status = TIMEOUT
    else:
        status = INTERRUPTED if interrupted and not res.ended else FAILED
    slow = False
    after: float | None = None
    for entry in res.planned:
        rec = res.urls.get(entry.get("id", ""))
        if rec is None or rec.get("ok"):
            continue
        wait = rec.get("retry_after")
        if rec.get("http") == 429 or isinstance(wait, int | float):
            slow = True
        if isinstance(wait, int | float) and not isinstance(wait, bool):
            after = max(after or 0.0, float(wait))
    return Verdict(status, done, outcomes, "; ".join(errors), slow, after)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def locked(path: str) -> bool:
    """Whether a worker still holds ``path``'s lock: its attempt is under way."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # also drops our lock
    return False


def process_is(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``ticks`` (not a reused pid)."""
    return ticks is not None and start_ticks(pid) == ticks


def sender_alive(pid: int, result_path: str) -> bool:
    """Whether ``pid`` is still the one-shot sender writing ``result_path`` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            words = fh.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return SENDER_MODULE.encode() in words and result_path.encode() in words


async def watch(pid: int, result_path: str, deadline_ns: int,
                now_ns: Callable[[], int] = time.time_ns) -> tuple[bool, str]:
    """Wait for an adopted one-shot sender to end; kill its group at ``deadline_ns``."""
    while sender_alive(pid, result_path):
        if now_ns() >= deadline_ns:
            _kill_group(pid)
            return True, f"timed out; adopted sender process group {pid} killed"
        await asyncio.sleep(0.1)
    return False, ""


async def watch_locked(result_path: str, started_ns: int, bound_s: float,
                       now_ns: Callable[[], int] = time.time_ns) -> tuple[bool, str]:
    """Wait for the worker holding ``result_path`` to finish; kill its group past its bound.

    The bound runs from when the worker began the job (its start record), or else
    from when the attempt was journaled. A holder that cannot be told apart from a
    reused pid is not killed but waited for: its own alarm ends it.
    """
    while locked(result_path):
        res = read_results(result_path)
        over = now_ns() >= max(started_ns, res.started_ns or 0) + int(bound_s * 1e9)
        if over and res.pid is not None and process_is(res.pid, res.ticks):
            _kill_group(res.pid)
            return True, (f"timed out; worker process group {res.pid} of the previous "
                          "router killed")
        await asyncio.sleep(0.1)
    return False, ""
