"""An attempt's outcome, read from its result file and journaled: sent, or a retry later.

A failed attempt is retried with backoff (:func:`knotify.store.outbox.backoff`); a
"slow down" answer (HTTP 429, or 503 with Retry-After) holds the whole receiver
until its Retry-After. The result file stays until the outcome is committed, so a
crash in between loses nothing: the next start reads it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from knotify.alerts import attempt
from knotify.alerts.commit import GroupCommit
from knotify.alerts.core import Core
from knotify.alerts.redact import scrub
from knotify.errors import JournalError
from knotify.store import outbox
from knotify.vocab import INTERRUPTED, OK, PENDING, SENT

#: The shortest hold after a "slow down" answer, whatever its Retry-After says.
MIN_SLOW_DOWN = 1.0


@dataclass(slots=True)
class Settled:
    """An attempt's journaled outcome, for what follows the commit."""

    message: outbox.MessageRow
    receiver: str
    verdict: attempt.Verdict
    urls: list[dict[str, Any]]
    error: str
    delay: float
    hold_ns: int


@dataclass(slots=True, frozen=True)
class Ending:
    """How an attempt ended, as its runner saw it (the result file says the rest)."""

    attempt_id: int
    message_id: int
    receiver: str
    path: str | None
    timed_out: bool = False
    note: str = ""
    #: It never began (the router stopped first): tried again at once after a start.
    interrupted: bool = False


class Settle:
    def __init__(self, core: Core, commit: GroupCommit) -> None:
        self.core = core
        self.commit = commit

    async def until_journaled(self, end: Ending) -> None:
        """The outcome must reach the journal: the result file stays until it has."""
        log = self.core.log
        while True:
            try:
                settled = await self.commit.op(functools.partial(self.rows, end))
            except (JournalError, sqlite3.Error) as exc:
                log.warning("alerts.journal_failed", error=str(exc), message=end.message_id,
                            retry_in_s=1.0)
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("alert.settle_crashed", message=end.message_id)
                self.core.count("settle_crashed")
                await asyncio.sleep(5.0)
                continue
            if settled is not None:
                self.after(settled, end.path)
            return

    def now(self, end: Ending) -> None:
        """Settle now, in a transaction of its own (at start-up)."""
        with self.core.journal.transaction():
            settled = self.rows(end)
        if settled is not None:
            self.after(settled, end.path)

    def rows(self, end: Ending) -> Settled | None:
        """Journal an attempt's outcome (inside the caller's transaction)."""
        core = self.core
        s = core.settings
        message = core.outbox.message(end.message_id)
        if message is None:
            return None
        receiver = core.receivers.get(end.receiver)
        secrets = receiver.secrets if receiver is not None else frozenset()
        res = attempt.read_results(end.path)
        v = attempt.verdict(res, message.done, end.timed_out, end.note, end.interrupted)
        urls = [{**u, "error": scrub(str(u.get("error", "")), secrets)} for u in v.urls]
        error = scrub(v.error, secrets)
        now = core.clock.time_ns()
        delay = 0.0
        hold_ns = 0
        core.outbox.finish_attempt(end.attempt_id, v.status, urls, error, now)
        if v.status == OK:
            core.outbox.update_message(end.message_id, status=SENT, done=v.done, ended_ns=now,
                                       detail=f"delivered on attempt {message.attempts}")
            if core.peers is not None:  # peering: the notification log, pushed to peers
                core.peers.sent(message, now)
        else:
            if v.status == INTERRUPTED and res.planned is None:
                delay = 0.0
            else:
                delay = outbox.backoff(message.attempts, s.retry_initial, s.retry_max)
            if v.slow_down:
                # "Slow down": not before its Retry-After (else the usual backoff), and
                # the whole receiver waits as long, not just this message.
                if v.retry_after is not None:
                    delay = max(v.retry_after, MIN_SLOW_DOWN)
                delay = min(delay, s.max_age)
                hold_ns = now + int(delay * 1e9)
                core.outbox.hold(end.receiver, hold_ns)
            core.outbox.update_message(end.message_id, status=PENDING,
                                       next_ns=now + int(delay * 1e9), done=v.done,
                                       detail=error)
        return Settled(message, end.receiver, v, urls, error, delay, hold_ns)

    def after(self, s: Settled, path: str | None) -> None:
        """After the outcome is committed: the file goes, the log line and the watchers."""
        core = self.core
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        v, message = s.verdict, s.message
        shown = [{"url": u["url"], "ok": u["ok"], **({"error": u["error"]} if not u["ok"]
                                                     else {})} for u in s.urls]
        core.count(f"attempt_{v.status}")
        fields = {"event_ids": message.event_ids, "message": message.rowid,
                  "receiver": s.receiver, "attempt": message.attempts, "urls": shown}
        if v.status == OK:
            core.log.info("alert.delivered", **fields)
        else:
            core.log.warning("alert.attempt_failed", status=v.status, error=s.error,
                             retry_in_s=s.delay, **fields)
        if s.hold_ns:
            holds = core.flights.holds
            holds[s.receiver] = max(holds.get(s.receiver, 0), s.hold_ns)
            core.count("slow_down")
            core.log.warning("alert.slow_down", receiver=s.receiver, message=message.rowid,
                             retry_after=v.retry_after, hold_s=round(s.delay, 3))
        core.publish("alert", {**fields, "status": v.status, "title": message.title})
        if v.status == OK:
            core.kick()
        else:
            core.wake()  # a retry time to sleep towards, perhaps a fallback
