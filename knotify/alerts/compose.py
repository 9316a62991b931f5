"""Grouping's second half: each due group becomes one message for its receiver.

Items are checked against silences and inhibit rules once more (one may have
begun during ``group_wait``), then rendered together (:func:`knotify.alerts.render.compose`).
"""

from __future__ import annotations

import sqlite3

from knotify.alerts import grouping, render
from knotify.alerts.core import Core
from knotify.vocab import COMPOSED, DROPPED, INHIBITED, SILENCED


def compose(core: Core, now: int) -> int | None:
    """Compose every due group; when the next group falls due (ns), or None."""
    waiting = core.outbox.waiting()
    if not waiting:
        return None
    due = grouping.due_groups(waiting, now)
    if due:
        with core.journal.transaction():  # one commit for a mass failover's groups
            for rowids in due:
                compose_group(core, rowids, now)
    return grouping.next_due(core.outbox.waiting())


def compose_group(core: Core, rowids: list[int], now: int) -> None:
    """One group's items into one message (inside the caller's transaction)."""
    items = core.outbox.items(rowids)
    if not items:
        return
    name = items[0].receiver
    receiver = core.receivers.get(name)
    event_ids = list(dict.fromkeys(i.event_id for i in items))
    if receiver is None:
        core.outbox.set_items(rowids, DROPPED, f"receiver {name!r} is no longer in the config")
        core.log.error("alert.dropped", event_ids=event_ids, receiver=name,
                       reason="the receiver is no longer in the config")
        return
    keep = []
    for item in items:
        match = core.silences.match({**item.fields, "receiver": name}, now)
        muted = core.inhibition(item.fields) if match is None else None
        if match is not None:
            core.outbox.set_items([item.rowid], SILENCED, match.describe())
            core.log.info("alert.silenced", event_id=item.event_id, receiver=name,
                          silence=match.id)
        elif muted is not None:
            core.outbox.set_items([item.rowid], INHIBITED, muted.describe())
            core.log.info("alert.inhibited", event_id=item.event_id, receivers=[name],
                          by=muted.event_id, rule=muted.rule, state=muted.state)
        else:
            keep.append(item)
    if not keep:
        return
    rendered = render.compose(
        [render.Item(i.alert, i.fields) for i in keep],
        receiver.templates.over(keep[0].spec), receiver.name, core.settings.fold_after)
    kinds = {i.alert for i in keep}
    alert = kinds.pop() if len(kinds) == 1 else "group"
    ids = list(dict.fromkeys(i.event_id for i in keep))
    message = core.outbox.add_message(name, alert, rendered.title, rendered.body,
                                      rendered.notify_type, ids, now,
                                      group_key=keep[0].group_key)
    core.outbox.set_items([i.rowid for i in keep], COMPOSED, message=message)
    if receiver.alertmanager is not None:
        try:
            core.am.composed(message, receiver, keep, core.settings.group_by, now)
        except sqlite3.Error:
            raise
        except Exception:  # the message still goes, with its events' alerts as firing
            core.count("alertmanager_crashed")
            core.log.exception("alertmanager.compose_crashed", message=message)
    core.log.info("alert.composed", event_ids=ids, message=message, receiver=name,
                  alert=alert, items=len(keep), title=rendered.title)
