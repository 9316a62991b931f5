"""Decode → journal → ack: one batch of messages read from a socket, answered.

Every message is hostile input: it is decoded and checked against who sent it
(:class:`knotify.trust.Peer`); events go to the intake in one batch and are acked only
once committed; requests (ops) are answered after the events. A message that is wrong
is refused with a reason and the others go on; a bug met by one message or event costs
only that one its ack.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from knotify.errors import JournalError, WireError
from knotify.event import Event, acked, check_text, decode_event, decode_message, reply
from knotify.trust import LOCAL, Peer
from knotify.vocab import ANY_SENDER

if TYPE_CHECKING:
    from knotify.intake.ingest import Intake
    from knotify.supervisor import Faults

#: The ops that bring events in (answered here, not by knotify.ops): any sender may use
#: them, as its own hosts.
EVENT_OPS = ("event", "events")
#: Events one ``events`` message may carry (the agent sends at most [agent] batch).
MAX_EVENTS_PER_MESSAGE = 1000
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

#: (envelope, the event, None) for "event", (envelope, events, rejected) for "events".
Pending = list[tuple[list[bytes], Any, list[dict[str, Any]] | None]]


class WireIntake:
    """Answers the batches a socket loop reads: events to the intake, ops to ``command``."""

    def __init__(self, intake: Intake, command: Callable[[dict[str, Any]], bytes],
                 access: Callable[[str], str], faults: Faults, log: Any,
                 stats: dict[str, int]) -> None:
        self.intake = intake
        self.command = command
        #: Who may use an op (:data:`knotify.vocab.OP_ACCESS`), by its name.
        self.access = access
        self.faults = faults
        self.log = log
        self.stats = stats
        for key in ("received", "rejected", "shed", "unauthorised"):
            stats.setdefault(key, 0)

    def rejected(self, reason: str) -> None:
        self.stats["rejected"] += 1
        self.log.warning("wire.rejected", reason=reason)

    def handle(self, sock: zmq.Socket[bytes], batch: list[list[bytes]],
               peers: list[Peer | None] | None = None) -> None:
        """Decode, journal and answer one batch; ``peers``: who sent each message (None:
        all came in on a local socket, where anything goes)."""
        replies: list[list[bytes]] = []
        pending: Pending = []
        events: list[Event] = []
        commands: list[tuple[list[bytes], dict[str, Any]]] = []
        now = time.time_ns()
        limit = self.intake.settings.max_message
        self.stats["received"] += len(batch)
        for i, frames in enumerate(batch):
            envelope, payload = frames[:-1], frames[-1]
            try:
                peer = LOCAL if peers is None else peers[i]
                if peer is None:
                    self.stats["unauthorised"] += 1
                    raise WireError("this client key is not authorised (any more): its "
                                    "file is not in the router's clients folder")
                msg = decode_message(payload, limit)
                op = msg["op"]
                refusal = peer.refuse_op(
                    op, ANY_SENDER if op in EVENT_OPS else self.access(op), msg)
                if refusal is not None:
                    self.stats["unauthorised"] += 1
                    raise WireError(refusal)
                if op == "event":
                    ev = decode_event(msg.get("event"), now)
                    refusal = peer.refuse_host(ev.host)
                    if refusal is not None:
                        self.stats["unauthorised"] += 1
                        raise WireError(refusal)
                    pending.append((envelope, ev, None))
                    events.append(ev)
                elif op == "events":
                    good, bad = self._events(msg, peer, now)
                    pending.append((envelope, good, bad))
                    events.extend(good)
                else:
                    check_text(msg)
                    if op == "heartbeat" and isinstance(msg.get("host"), str):
                        refusal = peer.refuse_host(msg["host"])
                        if refusal is not None:
                            self.stats["unauthorised"] += 1
                            raise WireError(refusal)
                    commands.append((envelope, msg))
            except WireError as exc:
                self.rejected(str(exc))
                replies.append([*envelope, reply(False, error=str(exc))])
            except Exception as exc:  # a bug: this message is refused, the others go on
                reason = self.faults.record("message", exc)
                replies.append([*envelope, reply(False, error=f"internal error: {reason}")])
        if events and self.intake.overloaded():
            self.stats["shed"] += len(events)
            for envelope, _item, _bad in pending:
                replies.append([*envelope, reply(False, error="busy: spool it and retry later")])
            pending = []
        elif events:
            try:
                self.intake.ingest(events)
            except JournalError as exc:
                for envelope, _item, _bad in pending:
                    replies.append([*envelope, reply(False, error=f"journal unavailable: {exc}")])
                pending = []
            except Exception as exc:
                # One event the journal or the rules choke on must not cost the others
                # their ack: the batch again, one message (and one event) at a time.
                self.faults.record("batch", exc, events=len(events))
                pending = self._ingest_apart(pending, replies)
        for envelope, item, rejected in pending:
            if rejected is None:
                replies.append([*envelope, acked(item.id)])
            else:
                replies.append([*envelope, reply(True, ids=[e.id for e in item],
                                                 rejected=rejected)])
        if commands:
            with contextlib.suppress(JournalError):
                self.intake.executor.flush()  # answers show every outcome known so far
        for envelope, msg in commands:
            replies.append([*envelope, self.command(msg)])
        # Frame by frame with plain int flags: send_multipart costs three times as much.
        send = sock.send
        for frames in replies:
            with contextlib.suppress(zmq.ZMQError):
                for frame in frames[:-1]:
                    send(frame, SNDMORE_NOBLOCK)
                send(frames[-1], NOBLOCK)

    def _events(self, msg: dict[str, Any], peer: Peer, now: int
                ) -> tuple[list[Event], list[dict[str, Any]]]:
        """An ``events`` message: the good events and the refused ones (index, error)."""
        items = msg.get("events")
        if not isinstance(items, list):
            raise WireError("'events' must be a list")
        if len(items) > MAX_EVENTS_PER_MESSAGE:
            raise WireError(f"'events' holds {len(items)} events; at most "
                            f"{MAX_EVENTS_PER_MESSAGE} per message")
        good: list[Event] = []
        bad: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                ev = decode_event(item, now)
            except WireError as exc:
                bad.append({"index": index, "error": str(exc)})
                self.rejected(str(exc))
                continue
            refusal = peer.refuse_host(ev.host)
            if refusal is not None:
                # The whole message: a sender sets aside events refused one by one, but
                # these are good events from a misconfigured sender, to keep until its
                # key or name is fixed.
                self.stats["unauthorised"] += 1
                raise WireError(f"event {index}: {refusal}")
            good.append(ev)
        return good, bad

    def _ingest_apart(self, pending: Pending, replies: list[list[bytes]]) -> Pending:
        """After a batch failed for an unexpected reason: each event on its own, so that
        only the one at fault is refused (named in the answer); the rest are acked."""
        kept: Pending = []
        for envelope, item, rejected in pending:
            single = rejected is None
            good: list[Event] = []
            bad = [] if rejected is None else list(rejected)
            failed: str | None = None
            # Where each event stood in the message (the refused ones are not in ``item``).
            refused = {b["index"] for b in bad}
            places = [i for i in range(len(bad) + (1 if single else len(item)))
                      if i not in refused]
            for index, ev in zip(places, [item] if single else item, strict=True):
                try:
                    self.intake.ingest([ev])
                except JournalError as exc:
                    failed = f"journal unavailable: {exc}"
                    break
                except Exception as exc:
                    reason = self.faults.record("message", exc, event_id=ev.id)
                    failed = f"internal error: {reason}"
                    bad.append({"index": index, "error": failed})
                    continue
                good.append(ev)
            if single:
                if failed is not None:
                    replies.append([*envelope, reply(False, error=failed)])
                else:
                    kept.append((envelope, item, None))
            elif failed is not None and failed.startswith("journal"):
                replies.append([*envelope, reply(False, error=failed)])
            else:
                kept.append((envelope, good, sorted(bad, key=lambda b: b["index"])))
        return kept
