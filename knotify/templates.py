"""``{field}`` templates for action arguments, log messages and alert texts.

Deliberately small: a template names event fields and nothing else (no
attribute access, indexing or format specs), so a value can never become code,
and every field name is checked when the config is loaded.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping

from knotify.errors import TemplateError
from knotify.event import Event
from knotify.tracker import Transition
from knotify.units import format_duration
from knotify.vocab import CLUSTER, SPLIT_BRAIN

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
    "when": "event time with its date and UTC offset, ISO 8601 to the second "
            "(2025-03-14T09:26:53+01:00), in the router's time zone",
    "duration": "how long the previous state lasted, e.g. 3m04s (empty if unknown)",
    "duration_s": "the same in seconds",
    "class": "transition, repeat or notice",
    "source": "hook, fifo, send, resync (a state snapshot from keepalived) or cluster",
    "rule": "the id of the rule that fired",
    "detail": "extra text for events knotify makes (e.g. which hosts are MASTER)",
    "involved": "the hosts the event is about, comma-separated: its host, or for a CLUSTER "
                "event the hosts of the condition (the MASTERs of a split brain, else "
                "every member)",
}



class Template:
    """A parsed template: literal text and field references."""

    __slots__ = ("_format", "fields", "parts", "text")

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
        #: The field names it uses.
        self.fields = frozenset(v for is_field, v in self.parts if is_field)
        # Rendering is one str.format of the literal parts (braces escaped) with the fields.
        self._format = "".join("{" + v + "}" if is_field else v.replace("{", "{{")
                               .replace("}", "}}") for is_field, v in self.parts)

    def render(self, fields: dict[str, str]) -> str:
        return self._format.format_map(fields)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _local(ev: Event) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ev.ts_ns / 1e9).astimezone()


def iso_time(ns: int, timespec: str = "seconds") -> str:
    """A time as ISO 8601 with its date and UTC offset, in the router's time zone
    (``TZ``, else /etc/localtime): ``2025-03-14T09:26:53+01:00``."""
    return _dt.datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec=timespec)


def involved(ev: Event) -> str:
    """The hosts an event is about (see FIELDS["involved"])."""
    if ev.kind != CLUSTER:
        return ev.host
    hosts: list[str] = []
    if ev.state == SPLIT_BRAIN:
        for field in ("masters", "evidence"):
            value = ev.extra.get(field)
            if isinstance(value, list):
                hosts.extend(h for h in value if isinstance(h, str))
    if not hosts:
        members = ev.extra.get("members")
        if isinstance(members, list):
            hosts.extend(m["host"] for m in members
                         if isinstance(m, dict) and isinstance(m.get("host"), str))
    return ", ".join(sorted(set(hosts))) or ev.host


def _duration(ev: Event, tr: Transition) -> float | None:
    return tr.duration_s(ev.ts_ns) if tr.cls == "transition" else None


def _text_duration(ev: Event, tr: Transition) -> str:
    duration = _duration(ev, tr)
    return "" if duration is None else format_duration(duration)


def _seconds(ev: Event, tr: Transition) -> str:
    duration = _duration(ev, tr)
    return "" if duration is None else f"{duration:.3f}"


#: How each field is made, so that a template's own fields are all that is computed.
_MAKE: dict[str, Callable[[Event, Transition, str], str]] = {
    "id": lambda ev, tr, rule: ev.id,
    "host": lambda ev, tr, rule: ev.host,
    "kind": lambda ev, tr, rule: ev.kind,
    "name": lambda ev, tr, rule: ev.name,
    "vs": lambda ev, tr, rule: ev.vs,
    "subject": lambda ev, tr, rule: ev.label,
    "state": lambda ev, tr, rule: tr.state,
    "reported": lambda ev, tr, rule: ev.state,
    "prev_state": lambda ev, tr, rule: tr.prev_state,
    "from": lambda ev, tr, rule: tr.prev_state,
    "prio": lambda ev, tr, rule: "" if ev.prio is None else str(ev.prio),
    "seq": lambda ev, tr, rule: str(ev.seq),
    "ts": lambda ev, tr, rule: _local(ev).isoformat(timespec="milliseconds"),
    "ts_ns": lambda ev, tr, rule: str(ev.ts_ns),
    "time": lambda ev, tr, rule: _local(ev).strftime("%H:%M:%S"),
    "when": lambda ev, tr, rule: iso_time(ev.ts_ns),
    "duration": lambda ev, tr, rule: _text_duration(ev, tr),
    "duration_s": lambda ev, tr, rule: _seconds(ev, tr),
    "class": lambda ev, tr, rule: tr.cls,
    "source": lambda ev, tr, rule: ev.source,
    "rule": lambda ev, tr, rule: rule,
    "detail": lambda ev, tr, rule: str(ev.extra.get("detail", "")),
    "involved": lambda ev, tr, rule: involved(ev),
}
assert _MAKE.keys() == FIELDS.keys()


def event_fields(ev: Event, tr: Transition, rule: str = "",
                 only: set[str] | frozenset[str] | None = None) -> dict[str, str]:
    """Every template field of one event, as text (``only``: just these, which is
    cheaper: a log message's fields are made for every event)."""
    return {name: _MAKE[name](ev, tr, rule) for name in (FIELDS if only is None else only)}
