"""The router's side of Alertmanager receivers: which alerts are active, resolved, re-posted.

An Alertmanager alert is a *condition*: the subject of an event (an instance, a
cluster, a peer) in the state that was paged. Its rows (``am_alerts``, one per
receiver and label set) say since when it holds and, once it no longer does,
when it ended. Every post is a message of the ordinary outbox (so it is
journaled, retried with backoff, held on 429) linked to the alerts it carries
(``am_posts``); what is posted is read when the attempt starts, so a retry
always says the truth of that moment (an alert resolved meanwhile goes out
resolved). A receiver's posts go out one after another (one group key), so an
older post never overtakes a newer one.

- A message composed for the receiver (:meth:`Desk.composed`) fires the alert of
  each of its events; an event that moves the subject to another state resolves
  the subject's alert in its previous state. An event that ends an incident
  (SPLIT_BRAIN_RESOLVED, MASTER_BACK, PEER_BACK, OK), and a rule's page sent only
  because the state it pages ended (``send_resolved``: FAULT -> BACKUP for a rule
  on FAULT), resolves that alert and fires none: nobody paged the new state. Such a
  page may be composed before or after the tick below saw the change (its group
  waits ``group_wait``); either way it posts the alert resolved.
- :meth:`Desk.tick` (the engine's loop, at least once a second) resolves every active
  alert whose subject the tracker no longer sees in that state (a FAULT instance
  back in BACKUP, whatever rule matched that) and, every ``repost_interval``, posts
  the receiver's active alerts again: Alertmanager resolves an alert that is not
  re-sent (each is posted valid for 4 intervals, its ``endsAt``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from knotify.alerts import render
from knotify.alerts.alertmanager import fingerprint, labels_for
from knotify.event import Key
from knotify.store.alertmanager import AlertmanagerStore, AMAlert
from knotify.tracker import KeyState
from knotify.vocab import CLUSTER, ENDING_STATES, INIT

if TYPE_CHECKING:
    from knotify.alerts.receivers import Receiver
    from knotify.store.outbox import ItemRow, Outbox

#: Event ids an alert's annotation keeps (the newest).
MAX_IDS = 10
#: Resolved alerts are forgotten this long after they ended (their posts long done).
KEEP_RESOLVED_NS = 2 * 86400 * 10**9
PRUNE_EVERY_NS = 3600 * 10**9


def group_key(receiver: str) -> str:
    """Every post to one Alertmanager receiver is in one group: they go out in order."""
    return json.dumps(["alertmanager", receiver], separators=(",", ":"))


def _ns(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _ended(fields: Mapping[str, str]) -> str | None:
    """The state an item says ended ("" if unknown), or None for an item that pages its
    own state: an event that ends an incident (SPLIT_BRAIN_RESOLVED, MASTER_BACK,
    PEER_BACK, OK), or a rule's page sent only because its paged state ended
    (``send_resolved``: FAULT -> BACKUP for a rule on FAULT)."""
    if fields.get(render.ENDS_FIELD):
        return fields[render.ENDS_FIELD]
    if fields.get("state", "") in ENDING_STATES:
        return fields.get("prev_state", "")
    return None


def _clock(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


class Desk:
    """Alertmanager alerts in the journal; the caller holds the transaction where noted."""

    def __init__(self, rows: AlertmanagerStore, outbox: Outbox, log: Any) -> None:
        self.rows = rows
        self.database = rows.database
        self.outbox = outbox
        self.log = log
        #: When each receiver's active alerts were last re-posted (ns), or since when it has
        #: had some; at the first tick (a router that starts): due at once.
        self._reposted: dict[str, int] = {}
        self._first = True
        self._pruned = 0

    def get(self, receiver: str, fp: str) -> AMAlert | None:
        return self.rows.get(receiver, fp)

    def active(self, receiver: str | None = None) -> list[AMAlert]:
        return self.rows.active(receiver)

    def _resolve(self, a: AMAlert, ends_ns: int) -> None:
        a.ends_ns = max(a.starts_ns, ends_ns)
        self.rows.set_ended(a)

    # -- a message composed for the receiver (inside the engine's transaction) ----------------

    def composed(self, message: int, receiver: Receiver, items: Sequence[ItemRow],
                 group_by: Sequence[str], now: int) -> list[str]:
        """Fire (or resolve) the alerts of a message's events; its fingerprints."""
        am = receiver.alertmanager
        assert am is not None
        touched: dict[str, None] = {}
        for item in items:
            f = item.fields
            key: Key = (f.get("host", ""), f.get("kind", ""), f.get("name", ""), f.get("vs", ""))
            ts = _ns(f.get("ts_ns"), now)
            state = f.get("state", "")
            ended = False
            for old in self.rows.active_of(receiver.name, key):
                if old.state != state:  # the subject left the paged state: that alert ends
                    self._resolve(old, ts)
                    touched[old.fingerprint] = None
                    ended = True
            severity = item.spec.get("severity") or None
            prev = _ended(f)
            if prev is not None:
                # It says a condition ended: that alert is resolved, and nothing fires
                # for the state it moved to (no rule paged that).
                if prev and prev != INIT and prev not in ENDING_STATES:
                    labels = labels_for({**f, "state": prev}, severity, dict(am.labels),
                                        group_by)
                    fp = fingerprint(labels)
                    known = self.get(receiver.name, fp)
                    if known is None:
                        if not ended:
                            # Nothing of ours to end (paged elsewhere, or by the other
                            # router): say it ended all the same; Alertmanager merges it
                            # with the firing one.
                            self.rows.put(AMAlert(receiver.name, fp, labels,
                                                  self._annotations(receiver, item), key,
                                                  prev, ts, ts, [item.event_id]))
                            touched[fp] = None
                    else:
                        if known.ends_ns is None:  # the same condition, seen from elsewhere
                            self._resolve(known, ts)
                        # Resolved already (the tick saw the state change first): this
                        # message says so again rather than nothing.
                        touched[fp] = None
                continue
            labels = labels_for(f, severity, dict(am.labels), group_by)
            fp = fingerprint(labels)
            current = self.get(receiver.name, fp)
            if current is not None and current.ends_ns is None:
                starts, ids = current.starts_ns, [*current.event_ids, item.event_id]
            else:
                starts, ids = ts, [item.event_id]
            ids = list(dict.fromkeys(ids))[-MAX_IDS:]
            annotations = self._annotations(receiver, item, ids)
            self.rows.put(AMAlert(receiver.name, fp, labels, annotations, key, state, starts,
                                  None, ids))
            touched[fp] = None
        self.rows.link(message, receiver.name, list(touched))
        self.outbox.set_group_key(message, group_key(receiver.name))
        return list(touched)

    @staticmethod
    def _annotations(receiver: Receiver, item: ItemRow,
                     ids: Sequence[str] | None = None) -> dict[str, str]:
        rendered = render.compose([render.Item(item.alert, item.fields)],
                                  receiver.templates.over(item.spec), receiver.name)
        out = {"summary": rendered.title, "description": rendered.body,
               "event_ids": ", ".join(ids or [item.event_id])}
        if item.fields.get("rule"):
            out["rule"] = item.fields["rule"]
        if item.fields.get("kind") == CLUSTER and item.fields.get("host"):
            out["detected_by"] = item.fields["host"]
        if item.fields.get("detail"):
            out["detail"] = item.fields["detail"]
        return out

    # -- the engine's loop ----------------------------------------------------------------------

    def tick(self, now: int, states: Mapping[Key, KeyState],
             receivers: Mapping[str, Receiver]) -> tuple[int | None, int]:
        """Resolve what no longer holds, re-post what does; (next due ns, messages added)."""
        ours = {n: r for n, r in receivers.items() if r.alertmanager is not None}
        if not ours:
            self._first = False
            return None, 0
        added = 0
        nxt: int | None = None
        active = [a for a in self.active() if a.receiver in ours]
        ended: dict[str, list[AMAlert]] = {}
        for a in active:
            current = states.get(a.key)
            if current is None or current.state != a.state:
                ended.setdefault(a.receiver, []).append(a)
        if ended:
            with self.database.transaction():
                for name, alerts in ended.items():
                    for a in alerts:
                        current = states.get(a.key)
                        self._resolve(a, min(now, current.since_ns) if current else now)
                    self._message(name, "resolved", alerts, now)
                    added += 1
            for name, alerts in ended.items():
                self.log.info("alertmanager.resolved", receiver=name,
                              alerts=[a.describe() for a in alerts])
        gone = {a.fingerprint for alerts in ended.values() for a in alerts}
        for name, receiver in ours.items():
            mine = [a for a in active if a.receiver == name and a.fingerprint not in gone]
            if not mine:
                self._reposted.pop(name, None)
                continue
            assert receiver.alertmanager is not None
            every = int(receiver.alertmanager.repost_interval * 1e9)
            # A first alert was just posted: its re-post is due an interval later.
            last = self._reposted.setdefault(name, 0 if self._first else now)
            due = last + every
            if due <= now:
                if self.outbox.open_messages(name):
                    due = now + 10**9  # a post is still on its way: it says as much
                else:
                    with self.database.transaction():
                        self._message(name, "repost", mine, now)
                    added += 1
                    self._reposted[name] = now
                    due = now + every
            nxt = due if nxt is None else min(nxt, due)
        self._first = False
        if now - self._pruned >= PRUNE_EVERY_NS:
            self._pruned = now
            with self.database.transaction():
                self.prune(now)
        return nxt, added

    def _message(self, receiver: str, what: str, alerts: Sequence[AMAlert], now: int) -> int:
        if what == "resolved":
            head = (f"resolved: {alerts[0].describe()}" if len(alerts) == 1
                    else f"resolved: {len(alerts)} alerts")
            lines = [f"{a.describe()}: ended {_clock(a.ends_ns or now)}" for a in alerts]
            kind = "success"
        else:
            head = (f"still active: {alerts[0].describe()}" if len(alerts) == 1
                    else f"still active: {len(alerts)} alerts")
            lines = [f"{a.describe()}: since {_clock(a.starts_ns)}" for a in alerts]
            kind = "info"
        ids = list(dict.fromkeys(i for a in alerts for i in a.event_ids[-1:]))
        message = self.outbox.add_message(receiver, what, f"[Alertmanager] {head}",
                                          "\n".join(lines), kind, ids, now,
                                          group_key=group_key(receiver))
        self.rows.link(message, receiver, [a.fingerprint for a in alerts])
        return message

    def prune(self, now: int) -> None:
        self.rows.prune(now - KEEP_RESOLVED_NS)

    # -- an attempt starts: what it posts ------------------------------------------------------

    def alerts(self, message: int, receiver: Receiver) -> list[dict[str, Any]]:
        """The alerts message ``message`` carries, as they stand now (firing or resolved).

        A message with none linked (one escalated here from another receiver) carries
        its events' alerts as firing ones, not remembered; an event that says a condition
        ended carries that alert resolved at its time, never one firing for its new state.
        """
        posted = self.rows.posted(message)
        if posted:
            return [a.post() for a in posted]
        row = self.outbox.message(message)
        am = receiver.alertmanager
        if row is None or am is None:
            return []
        out: dict[str, dict[str, Any]] = {}
        for item in self.outbox.message_items(row.origin):
            f = item.fields
            ts = _ns(f.get("ts_ns"), row.created_ns)
            prev = _ended(f)
            if prev is not None and (not prev or prev == INIT or prev in ENDING_STATES):
                continue  # it ended nothing anyone was paged for
            labels = labels_for(f if prev is None else {**f, "state": prev},
                                item.spec.get("severity") or None, dict(am.labels))
            fp = fingerprint(labels)
            if prev is not None and fp in out:  # fired and ended in this one message
                out[fp]["ends_ns"] = ts
                continue
            out[fp] = {"labels": labels, "annotations": self._annotations(receiver, item),
                       "starts_ns": ts, "ends_ns": None if prev is None else ts}
        return list(out.values())
