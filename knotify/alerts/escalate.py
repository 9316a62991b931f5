"""When a receiver keeps failing: its fallback receiver gets the message, and a message
older than ``max_age`` is given up (and escalated, if it was not already)."""

from __future__ import annotations

from knotify.alerts import render
from knotify.alerts.core import Core
from knotify.alerts.receivers import Receiver
from knotify.store.outbox import MessageRow
from knotify.units import format_duration
from knotify.vocab import EXPIRED


def fallback(core: Core, name: str, receiver: Receiver, now: int) -> None:
    """``name`` is failing: its open messages older than ``fallback_after`` are escalated."""
    if receiver.fallback is None:
        return
    for message in core.outbox.open_messages(name):
        if (message.escalated_to is None
                and now - message.created_ns >= receiver.fallback_after * 1e9):
            with core.journal.transaction():
                escalate(core, message, receiver, now)


def expire(core: Core, message: MessageRow, receiver: Receiver, now: int) -> None:
    """Give ``message`` up: older than max_age (inside the caller's transaction)."""
    detail = (f"gave up after {message.attempts} attempt(s): older than max_age "
              f"{format_duration(core.settings.max_age)}"
              + (f"; last error: {message.detail}" if message.detail else ""))
    core.outbox.update_message(message.rowid, status=EXPIRED, ended_ns=now, detail=detail)
    core.count("expired")
    core.log.error("alert.expired", event_ids=message.event_ids, message=message.rowid,
                   receiver=receiver.name, attempts=message.attempts, detail=detail)
    if receiver.fallback is not None and message.escalated_to is None:
        escalate(core, message, receiver, now)


def escalate(core: Core, message: MessageRow, receiver: Receiver, now: int) -> None:
    """A new message for ``receiver``'s fallback, rendered with the fallback's templates
    (inside the caller's transaction)."""
    assert receiver.fallback is not None
    target = core.receivers.get(receiver.fallback)
    if target is None:
        return
    items = core.outbox.message_items(message.origin)
    if items:
        rendered = render.compose([render.Item(i.alert, i.fields) for i in items],
                                  target.templates.over(items[0].spec), target.name,
                                  core.settings.fold_after)
        title, body, kind = rendered.title, rendered.body, rendered.notify_type
    else:
        title, body, kind = message.title, message.body, message.notify_type
    body += (f"\n\n(sent to {target.name} because {receiver.name} failed"
             + (f": {message.detail}" if message.detail else "") + ")")
    new = core.outbox.add_message(target.name, message.alert, title, body, kind,
                                  message.event_ids, now, escalated_from=message.rowid,
                                  origin=message.origin, group_key=message.group_key)
    core.outbox.set_escalated(message.rowid, new)
    core.count("escalated")
    core.log.warning("alert.escalated", event_ids=message.event_ids, message=message.rowid,
                     receiver=receiver.name, fallback=target.name, fallback_message=new)
    core.again = True
