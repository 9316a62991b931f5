"""``{field}`` templates for action arguments, log messages and alert texts.

Deliberately small: a template names event fields and nothing else (no
attribute access, indexing or format specs), so a value can never become code,
and every field name is checked when the config is loaded.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from knotify.event import Event
from knotify.tracker import Transition
from knotify.units import format_duration

FIELDS = {
    "id": "the event's unique id",
    "host": "the host the event came from",
    "kind": "INSTANCE, GROUP, VS, RS (or CLUSTER, PEER for events knotify makes)",
    "name": "instance, group or server name",
    "vs": "the virtual server of an RS event (empty otherwise)",
    "subject": "name, plus ' in VS' for real servers",
    "state": "the state the subject is now in (MASTER for MASTER_PRIORITY)",
    "reported": "the state word exactly as keepalived reported it",
    "prev_state": "the state before (INIT when none was known)",
    "from": "alias of prev_state",
    "prio": "priority, empty when the hook did not get one",
    "seq": "the per-host sequence number",
    "ts": "event time, ISO 8601 with milliseconds, local time zone",
    "ts_ns": "event time in ns since the epoch",
    "time": "event time as HH:MM:SS",
    "duration": "how long the previous state lasted, e.g. 3m04s (empty if unknown)",
    "duration_s": "the same in seconds",
    "class": "transition, repeat or notice",
    "source": "hook, fifo, send, resync (a state snapshot from keepalived) or cluster",
    "rule": "the id of the rule that fired",
    "detail": "extra text for events knotify makes (e.g. which hosts are MASTER)",
}


class TemplateError(ValueError):
    pass


class Template:
    """A parsed template: literal text and field references."""

    __slots__ = ("parts", "text")

    def __init__(self, text: str, known: Mapping[str, str] = FIELDS) -> None:
        self.text = text
        self.parts: list[tuple[bool, str]] = []  # (is_field, literal-or-name)
        i, literal = 0, []
        while i < len(text):
            ch = text[i]
            if ch == "{":
                if text.startswith("{{", i):
                    literal.append("{")
                    i += 2
                    continue
                end = text.find("}", i)
                if end < 0:
                    raise TemplateError(f"unclosed '{{' at position {i} in {text!r}")
                name = text[i + 1 : end].strip()
                if name not in known:
                    raise TemplateError(
                        f"unknown field {{{name}}} in {text!r}; known: " + ", ".join(known)
                    )
                if literal:
                    self.parts.append((False, "".join(literal)))
                    literal = []
                self.parts.append((True, name))
                i = end + 1
            elif ch == "}":
                if text.startswith("}}", i):
                    literal.append("}")
                    i += 2
                    continue
                raise TemplateError(f"single '}}' at position {i} in {text!r} (write '}}}}')")
            else:
                literal.append(ch)
                i += 1
        if literal:
            self.parts.append((False, "".join(literal)))

    def render(self, fields: dict[str, str]) -> str:
        return "".join(fields[v] if is_field else v for is_field, v in self.parts)

    @property
    def fields(self) -> set[str]:
        return {v for is_field, v in self.parts if is_field}

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


_NEED_TIME = frozenset(("ts", "time"))


def event_fields(ev: Event, tr: Transition, rule: str = "",
                 only: set[str] | frozenset[str] | None = None) -> dict[str, str]:
    """Every template field of one event, as text (``only``: the caller needs just these,
    so the local-time formatting, the costly part, can be left out)."""
    duration = tr.duration_s(ev.ts_ns) if tr.cls == "transition" else None
    if only is None or not _NEED_TIME.isdisjoint(only):
        when = _dt.datetime.fromtimestamp(ev.ts_ns / 1e9).astimezone()
        ts, clock = when.isoformat(timespec="milliseconds"), when.strftime("%H:%M:%S")
    else:
        ts = clock = ""
    fields: dict[str, Any] = {
        "id": ev.id,
        "host": ev.host,
        "kind": ev.kind,
        "name": ev.name,
        "vs": ev.vs,
        "subject": ev.label,
        "state": tr.state,
        "reported": ev.state,
        "prev_state": tr.prev_state,
        "from": tr.prev_state,
        "prio": "" if ev.prio is None else str(ev.prio),
        "seq": str(ev.seq),
        "ts": ts,
        "ts_ns": str(ev.ts_ns),
        "time": clock,
        "duration": "" if duration is None else format_duration(duration),
        "duration_s": "" if duration is None else f"{duration:.3f}",
        "class": tr.cls,
        "source": ev.source,
        "rule": rule,
        "detail": str(ev.extra.get("detail", "")),
    }
    return fields
