"""An alert's outbox items, one per receiver: silenced, inhibited, or waiting in its group.

Used for every alert the engine decides to send: the ones an event queues
(:mod:`.enqueue`) and the ones its timers queue (:mod:`.timers`: stable again, a
repeat). A waiting item is due in ``group_wait``; :mod:`.compose` makes it a message.
"""

from __future__ import annotations

from knotify.alerts import grouping, incident, inhibit
from knotify.alerts.core import Core
from knotify.alerts.silence import Silence
from knotify.store.outbox import StreamRow
from knotify.vocab import INHIBITED, SILENCED, WAITING

Silenced = list[tuple[str, Silence]]
Inhibited = list[tuple[str, inhibit.Inhibition]]


def mark_incident(core: Core, fields: dict[str, str]) -> None:
    """Grouping by incident: the alert's incident and hosts go with its fields."""
    if incident.INCIDENT in core.settings.group_by:
        fields["incident"], fields[incident.HOSTS_FIELD] = core.index().incident(
            fields.get("host", ""), fields.get("kind", ""), fields.get("name", ""))
    else:  # explicit group_by: today's messages exactly
        fields.pop("incident", None)
        fields.pop(incident.HOSTS_FIELD, None)


def add_item(core: Core, row: StreamRow, run: int | None, event_id: str, receiver: str,
             alert: str, status: str, detail: str | None, fields: dict[str, str],
             now: int) -> int:
    """One item of ``row``'s stream for ``receiver`` (inside the caller's transaction)."""
    mark_incident(core, fields)
    key = grouping.group_key(receiver, fields, core.settings.group_by)
    return core.outbox.add_item(
        run=run, event_id=event_id, receiver=receiver, stream=row.stream_id, alert=alert,
        status=status, detail=detail, group_key=key, fields=fields, spec=row.spec,
        created_ns=now, due_ns=now + int(core.settings.group_wait * 1e9))


def admit(core: Core, row: StreamRow, run: int | None, event_id: str, alert: str,
          fields: dict[str, str], now: int) -> tuple[list[str], Silenced, Inhibited]:
    """An item for each of the stream's receivers: the receivers it waits for, and the
    ones a silence or an inhibit rule muted (inside the caller's transaction)."""
    queued: list[str] = []
    silenced: Silenced = []
    inhibited: Inhibited = []
    muted = core.inhibition(fields)
    for receiver in row.receivers:
        match = core.silences.match({**fields, "receiver": receiver}, now)
        if match is not None:
            silenced.append((receiver, match))
            add_item(core, row, run, event_id, receiver, alert, SILENCED, match.describe(),
                     fields, now)
        elif muted is not None:
            inhibited.append((receiver, muted))
            add_item(core, row, run, event_id, receiver, alert, INHIBITED, muted.describe(),
                     fields, now)
        else:
            queued.append(receiver)
            add_item(core, row, run, event_id, receiver, alert, WAITING, None, fields, now)
    if muted is not None:
        core.log.info("alert.inhibited", event_id=event_id, receivers=row.receivers,
                      by=muted.event_id, rule=muted.rule, state=muted.state)
    return queued, silenced, inhibited
