"""What comes due with time alone: stable again after a flap, repeat_interval, and the
Alertmanager receivers' resolves and re-posts.

Each looks at the tracker's current states and the streams' memory; what it queues
goes through :func:`knotify.alerts.admit.admit` like any other alert.
"""

from __future__ import annotations

import sqlite3

from knotify.alerts import flap, render, repeat
from knotify.alerts.admit import admit
from knotify.alerts.core import MAX_SLEEP, Core
from knotify.errors import JournalError
from knotify.store.outbox import StreamRow
from knotify.templates import event_fields
from knotify.tracker import KeyState
from knotify.units import format_duration


def timers(core: Core, now: int) -> int | None:
    """Queue what is due now; when the next timer falls due (ns), or None."""
    nxt: int | None = None
    states = core.tracker.states
    for row in core.outbox.timed_streams(core.settings.repeat.states):
        current = states.get(row.key)
        if current is None:
            continue
        stream = row.state
        if stream.flapping:
            due = flap.stable_due(stream, current.since_ns, now, core.settings.flap)
            assert due is not None
            if due <= now:
                with core.journal.transaction():
                    stable(core, row, current, now)
            else:
                nxt = due if nxt is None else min(nxt, due)
            continue
        due = repeat.due(stream, current.state, current.epoch,
                         core.repeat_policy(row.repeat_s))
        if due is None:
            continue
        if due <= now:
            with core.journal.transaction():
                repeat_alert(core, row, current, now)
        else:
            nxt = due if nxt is None else min(nxt, due)
    return nxt


def stable(core: Core, row: StreamRow, current: KeyState, now: int) -> None:
    """A flapping stream has held one state long enough: say so (inside a transaction)."""
    stream = row.state
    rule = row.stream_id.rsplit("#", 1)[0]
    loaded = core.journal.load_event(current.event_id)
    if loaded is not None:
        fields = event_fields(*loaded, rule)
    else:
        fields = {**row.fields, "state": current.state, "id": current.event_id}
    fields.pop(render.ENDS_FIELD, None)  # it says a state holds, not that one ended
    suppressed = flap.end(stream)
    fields["change"] = render.change_text(
        render.STABLE, fields, count=suppressed,
        stable=format_duration(max(0, now - current.since_ns) / 1e9))
    repeat.queued(stream, current.state, current.epoch, now)
    row.event_id = current.event_id
    row.fields = fields
    queued, silenced, _ = admit(core, row, None, current.event_id, render.STABLE, fields, now)
    core.outbox.put_stream(row)
    core.log.info("alert.stable", event_id=current.event_id, stream=row.stream_id,
                  host=row.key[0], name=row.key[2], state=current.state,
                  suppressed=suppressed, receivers=queued,
                  silenced=[n for n, _ in silenced] or None)
    core.again = True


def repeat_alert(core: Core, row: StreamRow, current: KeyState, now: int) -> None:
    """A stream still in a bad state after repeat_interval: alert it again."""
    fields = dict(row.fields)
    fields.pop(render.ENDS_FIELD, None)  # it says a state holds, not that one ended
    fields["change"] = render.change_text(
        render.REPEAT, fields, since=format_duration(max(0, now - current.since_ns) / 1e9))
    event_id = row.event_id or current.event_id
    repeat.queued(row.state, current.state, current.epoch, now)
    queued, silenced, _ = admit(core, row, None, event_id, render.REPEAT, fields, now)
    core.outbox.put_stream(row)
    core.log.info("alert.repeat", event_id=event_id, stream=row.stream_id,
                  host=row.key[0], name=row.key[2], state=current.state,
                  receivers=queued, silenced=[n for n, _ in silenced] or None)
    core.again = True


def alertmanager(core: Core, now: int) -> int | None:
    """Alertmanager receivers: resolve what ended, re-post what lasts."""
    try:
        nxt, added = core.am.tick(now, core.tracker.states, core.receivers)
    except (JournalError, sqlite3.Error):
        raise
    except Exception:  # a bug here must not stop composing and delivering
        core.count("alertmanager_crashed")
        core.log.exception("alertmanager.tick_crashed")
        return now + int(MAX_SLEEP * 1e9)
    if added:
        core.again = True
    return nxt
