"""The values the outbox (:mod:`knotify.store.outbox`) reads and writes, and how a
row of its tables becomes one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from knotify.alerts.stream import Stream
from knotify.event import Key


@dataclass(slots=True)
class ItemRow:
    rowid: int
    event_id: str
    receiver: str
    stream: str
    alert: str
    fields: dict[str, str]
    spec: dict[str, str]
    group_key: str = ""


@dataclass(slots=True)
class MessageRow:
    rowid: int
    receiver: str
    alert: str
    title: str
    body: str
    notify_type: str
    event_ids: list[str]
    status: str
    created_ns: int
    next_ns: int
    attempts: int
    done: list[str]
    escalated_to: int | None
    escalated_from: int | None
    origin: int
    detail: str | None
    #: The group key of its items: a group's messages go out one after another.
    group_key: str | None = None


MESSAGE_COLUMNS = ("rowid, receiver, alert, title, body, notify_type, event_ids, status, "
                    "created_ns, next_ns, attempts, done, escalated_to, escalated_from, origin, "
                    "detail, group_key")


def message_row(row: Sequence[Any]) -> MessageRow:
    return MessageRow(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7],
                      row[8], row[9], row[10], json.loads(row[11]), row[12], row[13],
                      row[14] if row[14] is not None else row[0], row[15], row[16])


@dataclass(slots=True)
class StreamRow:
    stream_id: str
    key: Key
    receivers: list[str]
    spec: dict[str, str]
    repeat_s: float | None
    event_id: str | None
    fields: dict[str, str]
    state: Stream


@dataclass(slots=True)
class AttemptRow:
    rowid: int
    message: int
    receiver: str
    attempt: int
    started_ns: int
    result_path: str | None


STREAM_COLUMNS = ("stream, host, kind, name, vs, receivers, spec, repeat_s, event_id, "
                  "fields, alerted_state, alerted_epoch, last_ns, flapping, flap_since_ns, "
                  "suppressed")


def stream_row(row: Sequence[Any]) -> StreamRow:
    return StreamRow(
        row[0], (row[1], row[2], row[3], row[4]), json.loads(row[5]),
        json.loads(row[6]) if row[6] else {}, row[7], row[8],
        json.loads(row[9]) if row[9] else {},
        Stream(row[10], row[11], row[12], bool(row[13]), row[14], row[15]))
