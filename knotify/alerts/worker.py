"""A warm sender worker: ``python -m knotify.alerts.worker``, one of the router's pool.

Starting a Python process and importing apprise costs a few hundred ms of CPU;
a worker pays it once, then delivers job after job (:mod:`knotify.alerts.pool`
is the router's side). It runs in its own session, so the router can kill it
with its whole process group when a job overruns.

Protocol: one JSON job per line on stdin, ``{"id": N, "result": PATH, "job":
{...}}`` (the job carries the receiver's secrets: a pipe, never argv); one JSON
reply per line on the worker's original stdout, ``{"id": N}`` plus ``"error"``
when the job could not run and ``"retire": true`` when the worker will take no
other job. Everything else a plugin might print goes to stderr. The URL
outcomes themselves go to the job's result file, line by line, as in
:mod:`knotify.alerts.sender`.

A job's result file is created by the router (after it journaled the attempt)
and locked here (``flock``) for as long as the job runs. Right after taking
the lock the worker checks that the router that started it is still its parent;
if it is not, the job is dropped unsent. So, for a router that was SIGKILLed:

- a job the worker had not locked before the router died is never sent (the next
  router finds the file unlocked and without a plan, and sends it again itself);
- a job it had locked is finished (bounded by the worker's own alarm), and the next
  router, finding the file locked, waits for the lock and then reads what was sent:
  a URL is never sent twice because the router died.

A worker exits when stdin closes (the router stopped, or died: idle workers never
outlive it, busy ones finish their job first), when it is told nothing more, and
after a job in which apprise gave up waiting on a URL (its thread may still run).
It is deliberately not killed with its router (``PR_SET_PDEATHSIG``): a request cut
in the middle has an unknown outcome, and the next router would have to send it
again; finishing it, bounded, and leaving the result file lets the next router know.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
from typing import Any, TextIO

from knotify.alerts import sender
from knotify.alerts.record import Result
from knotify.alerts.redact import scrub, secret_tokens


def run_job(request: dict[str, Any], router: int) -> dict[str, Any]:
    """One job: lock its result file, check the router is still there, deliver."""
    ident = request.get("id")
    path = request.get("result")
    job = request.get("job")
    if not isinstance(path, str) or not isinstance(job, dict):
        return {"id": ident, "error": "malformed job: 'result' and 'job' are required"}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError as exc:  # the router removed it: it has given up on this attempt
        return {"id": ident, "error": f"cannot open the result file: {exc.strerror}"}
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.getppid() != router:
            return {"id": ident, "retire": True,
                    "error": "the router that sent this job is gone: not sent"}
        signal.alarm(sender.alarm_for(float(job.get("timeout", 30.0))))
        try:
            abandoned = sender.deliver(job, Result(fd))
        finally:
            signal.alarm(0)
    except Exception as exc:  # a bug or a broken plugin: say so, and start afresh
        secrets: set[str] = set()
        for url in job.get("urls", []):
            if isinstance(url, str):
                secrets |= secret_tokens(url)
        return {"id": ident, "retire": True,
                "error": scrub(f"{type(exc).__name__}: {exc}", secrets)[:sender.MAX_ERROR]}
    finally:
        os.close(fd)
    return {"id": ident, "retire": True} if abandoned else {"id": ident}


def serve(jobs: TextIO, replies: TextIO, router: int) -> int:
    for line in jobs:
        try:
            request = json.loads(line)
        except ValueError as exc:
            request = None
            reply: dict[str, Any] = {"id": None, "error": f"the job is not JSON: {exc}"}
        if isinstance(request, dict):
            reply = run_job(request, router)
        elif request is not None:
            reply = {"id": None, "error": "the job is not a JSON object"}
        try:
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
        except (BrokenPipeError, OSError):
            return 0  # the router is gone
        if reply.get("retire"):
            return 0
    return 0


def main() -> int:
    router = os.getppid()
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # a plugin's print() must not end up in the replies
    import apprise  # noqa: F401 - the point of a warm worker: imported once

    sender.watch_http()
    replies.write(json.dumps({"ready": os.getpid()}) + "\n")
    replies.flush()
    return serve(sys.stdin, replies, router)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # apprise may leave abandoned worker threads behind: they must not keep us alive.
    os._exit(code)
