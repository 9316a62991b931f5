"""The router's side of one delivery attempt: start the sender, bound it, read what it did.

The sender (:mod:`knotify.alerts.sender`) runs in its own session; at the
attempt's timeout (plus a short grace) its whole process group is killed. Its
result file says, URL by URL, what was delivered; :func:`verdict` turns that
into the attempt's outcome. A sender still running when the router died is
found again by its pid (checked against its command line) and watched to its
end, so the URLs it reached are never sent to twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

GRACE = 2.0
SENDER_MODULE = "knotify.alerts.sender"
ERR_TAIL = 2000

OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"
INTERRUPTED = "interrupted"


@dataclass(slots=True)
class Results:
    """What a result file says."""

    pid: int | None = None
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
    return Verdict(status, done, outcomes, "; ".join(errors))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_sender(job: dict[str, Any], result_path: str, timeout: float) -> tuple[bool, str]:
    """Run one attempt to its end or its bound; (timed out?, a note on a crash)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", SENDER_MODULE, "--result", result_path,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, cwd="/")
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return False, f"could not start the sender: {exc}"
    assert proc.stdin is not None and proc.stderr is not None
    stderr = proc.stderr
    tail = bytearray()

    async def pump() -> None:
        while chunk := await stderr.read(65536):
            tail.extend(chunk)
            del tail[:-ERR_TAIL]

    reader = asyncio.create_task(pump())
    try:
        proc.stdin.write(json.dumps(job).encode())
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        proc.stdin.close()
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout + GRACE)
    except TimeoutError:
        timed_out = True
        _kill_group(proc.pid)
        await proc.wait()
    except asyncio.CancelledError:
        # The router is stopping: the sender finishes on its own (it has its own
        # alarm) and the next router reads its result file.
        reader.cancel()
        raise
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), 1.0)
    reader.cancel()
    note = ""
    if timed_out:
        note = f"timed out after {timeout:g}s; sender process group {proc.pid} killed"
    elif proc.returncode:
        text = tail.decode("utf-8", "replace").strip().splitlines()
        note = (f"the sender exited {proc.returncode}"
                + (f": {text[-1][:300]}" if text else ""))
    return timed_out, note


def sender_alive(pid: int, result_path: str) -> bool:
    """Whether ``pid`` is still the sender writing ``result_path`` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            words = fh.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return SENDER_MODULE.encode() in words and result_path.encode() in words


async def watch(pid: int, result_path: str, deadline_ns: int) -> tuple[bool, str]:
    """Wait for an adopted sender to end; kill its group at ``deadline_ns``."""
    while sender_alive(pid, result_path):
        if time.time_ns() >= deadline_ns:
            _kill_group(pid)
            return True, f"timed out; adopted sender process group {pid} killed"
        await asyncio.sleep(0.1)
    return False, ""
