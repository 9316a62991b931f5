"""Grouping: the events of one failover become one message per receiver.

Every queued item has a group key (its receiver and the ``group_by`` fields, by
default its incident: :mod:`knotify.alerts.incident`) and a due time (when it was
queued plus ``group_wait``).
A group is composed into one message when its oldest item is due; every item
of the group waiting by then goes into it. Pure functions over plain values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Fields ``group_by`` may name: the event's, and ``incident`` (the default).
GROUP_FIELDS = ("incident", "host", "kind", "name", "vs", "state", "rule")


def group_key(receiver: str, fields: Mapping[str, str], group_by: Sequence[str]) -> str:
    return json.dumps([receiver, *(fields.get(name, "") for name in group_by)],
                      separators=(",", ":"), ensure_ascii=True)


@dataclass(slots=True, frozen=True)
class Waiting:
    rowid: int
    group_key: str
    due_ns: int


def due_groups(waiting: Sequence[Waiting], now_ns: int) -> list[list[int]]:
    """Row ids of each group that is due, items oldest first, groups oldest first."""
    groups: dict[str, list[Waiting]] = {}
    for item in sorted(waiting, key=lambda w: w.rowid):
        groups.setdefault(item.group_key, []).append(item)
    due = [items for items in groups.values() if min(i.due_ns for i in items) <= now_ns]
    due.sort(key=lambda items: items[0].rowid)
    return [[i.rowid for i in items] for items in due]


def next_due(waiting: Sequence[Waiting]) -> int | None:
    """When the next group falls due (ns), or None when nothing waits."""
    firsts: dict[str, int] = {}
    for item in waiting:
        firsts[item.group_key] = min(firsts.get(item.group_key, item.due_ns), item.due_ns)
    return min(firsts.values()) if firsts else None
