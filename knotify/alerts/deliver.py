"""Delivery: which open messages get an attempt now.

Each receiver has a window: the oldest open message of each of its groups, at most
a few times max_parallel_per_receiver of them (:meth:`knotify.store.outbox.Outbox.windows`).
A healthy receiver gets up to that many attempts at once; a failing one (a message
in its window has failed) is probed with its oldest message only, one attempt at a
time, so an outage costs one request per backoff step, not a storm, and the queue
resumes in order. A receiver that answered "slow down" is held until its
Retry-After. At most max_parallel attempts run in all, each on a warm sender worker
(:mod:`.pool`). Messages of a receiver no longer configured are dropped; messages
older than max_age expire (:mod:`.escalate`).

:meth:`Delivery.step` is the one place where attempts are started.
"""

from __future__ import annotations

import asyncio
import sqlite3

from knotify.alerts import escalate
from knotify.alerts.attempts import Attempts
from knotify.alerts.core import AHEAD, Core
from knotify.alerts.receivers import Receiver
from knotify.errors import JournalError
from knotify.store.outbox import MessageRow
from knotify.vocab import DROPPED, SENDING


class Delivery:
    def __init__(self, core: Core, attempts: Attempts) -> None:
        self.core = core
        self.attempts = attempts
        #: Whether the engine's loop runs (before it does, a kick waits for its first tick).
        self.armed = False
        self._kicked = False

    def step(self, now: int) -> int | None:
        """Start the attempts that may start now; when a held or backed-off one may (ns)."""
        core = self.core
        flights = core.flights
        nxt: int | None = None
        # An attempt whose worker is done but whose outcome is not yet committed still
        # holds its place in the window; one more behind it may start meanwhile (so its
        # start shares the commit with that outcome).
        settling = flights.settling()
        per = core.settings.max_parallel_per_receiver
        for name, window in core.outbox.windows(
                lambda receiver: AHEAD * per + settling.get(receiver, 0)).items():
            failing = any(m.attempts > (1 if m.status == SENDING else 0) for m in window)
            receiver = core.receivers.get(name)
            self._retire(name, receiver, window, now)
            if receiver is None:
                continue
            if failing:
                escalate.fallback(core, name, receiver, now)
            hold = flights.holds.get(name, 0)
            if hold > now:
                nxt = hold if nxt is None else min(nxt, hold)
                continue
            due = self._send(receiver, window, failing, now)
            if due is not None:
                nxt = due if nxt is None else min(nxt, due)
        return nxt

    def _retire(self, name: str, receiver: Receiver | None, window: list[MessageRow],
                now: int) -> None:
        """Drop the window's messages whose receiver is gone; expire the too old ones."""
        core = self.core
        for message in list(window):
            if message.rowid in core.flights.inflight or message.status == SENDING:
                continue
            if receiver is None:
                with core.journal.transaction():
                    core.outbox.update_message(
                        message.rowid, status=DROPPED, ended_ns=now,
                        detail="the receiver is no longer in the config")
                core.log.error("alert.dropped", event_ids=message.event_ids,
                               message=message.rowid, receiver=name,
                               reason="the receiver is no longer in the config")
                window.remove(message)
                core.again = True
            elif now - message.created_ns >= core.settings.max_age * 1e9:
                with core.journal.transaction():
                    escalate.expire(core, message, receiver, now)
                window.remove(message)
                core.again = True

    def _send(self, receiver: Receiver, window: list[MessageRow], failing: bool,
              now: int) -> int | None:
        """Start attempts at ``receiver``'s window; when a backed-off message may go (ns)."""
        core = self.core
        working = core.flights.working
        nxt: int | None = None
        busy = sum(1 for r in working.values() if r == receiver.name)
        # A healthy receiver may have more attempts journaled and waiting for their
        # turn than it has at workers: the next job is ready the moment a worker is,
        # and no commit is in its way.
        limit = 1 if failing else AHEAD * core.settings.max_parallel_per_receiver
        for message in window[:1] if failing else window:
            if message.rowid in core.flights.inflight or message.status == SENDING:
                continue
            if message.next_ns > now:
                nxt = message.next_ns if nxt is None else min(nxt, message.next_ns)
                continue
            if (core.stopping or busy >= limit
                    or len(working) >= AHEAD * core.settings.max_parallel):
                break
            if core.peers is not None:  # peering: wait our turn, skip what a peer sent
                verdict = core.peers.gate(message, now)
                if verdict.peer is not None:
                    core.peers.skip(message, verdict, now)
                    core.again = True
                    continue
                if verdict.until_ns > now:
                    nxt = verdict.until_ns if nxt is None else min(nxt, verdict.until_ns)
                    continue
            self.attempts.start(message, receiver)
            busy += 1
        return nxt

    def kick(self) -> None:
        """A worker came free: look for the next message in this loop turn (no full tick)."""
        if self._kicked or not self.armed:
            return
        self._kicked = True
        asyncio.get_running_loop().call_soon(self._step_now)

    def _step_now(self) -> None:
        core = self.core
        self._kicked = False
        try:
            self.step(core.clock.time_ns())
        except (JournalError, sqlite3.Error) as exc:
            core.log.warning("alerts.journal_failed", error=str(exc), retry_in_s=1.0)
        except Exception:
            core.log.exception("alerts.deliver_crashed")
            core.count("deliver_crashed")
        if core.again:
            core.wake()
