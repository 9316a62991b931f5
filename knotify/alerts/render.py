"""Titles and bodies for alert messages: one event, or a group of them.

Pure functions over plain values. An :class:`Item` carries one event's template
fields (:func:`knotify.templates.event_fields`) plus what knotify adds for
alerts (``change``, ``headline``, ...); :func:`compose` turns a list of items
into one title and body with a receiver's or rule's templates. The defaults
read well both as a chat message and as a plain-text e-mail::

    [node1] G1, VI_1, VI_2 -> MASTER
    2025-03-14T12:00:01+01:00 node1 GROUP G1: BACKUP -> MASTER (after 3h02m in BACKUP)
    2025-03-14T12:00:01+01:00 node1 INSTANCE VI_1: BACKUP -> MASTER (prio 100, after ...)
    ...

CLUSTER and PEER events say what knotify saw, with the hosts involved in the title::

    [lb1, lb2] VI_1: SPLIT_BRAIN
    2025-03-14T12:00:06+01:00 central CLUSTER VI_1: SPLIT_BRAIN: lb1, lb2 are all MASTER
    for 5.0s
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from knotify.errors import TemplateError
from knotify.templates import FIELDS, Template, iso_time
from knotify.vocab import CLUSTER, GROUP, INIT, INSTANCE, NO_CONDITION, PEER, SYNTHETIC_KINDS

FIRING = "firing"
REPEAT = "repeat"
FLAPPING = "flapping"
STABLE = "stable"
TEST = "test"
ALERT_KINDS = (FIRING, REPEAT, FLAPPING, STABLE, TEST)

ALERT_FIELDS = {
    "alert": "firing, repeat (still in a bad state), flapping, stable or test",
    "change": "what happened, e.g. 'BACKUP -> MASTER (prio 100, after 3m04s in BACKUP)'",
    "headline": "a one-line summary of the whole message",
    "count": "how many events the message covers",
    "lines": "one line per event (rendered with the line template), one per line",
    "ids": "the event ids, comma-separated",
    "hosts": "the hosts involved in the events, comma-separated (for a CLUSTER event the "
             "hosts of its condition)",
    "receiver": "the receiver's name",
    "footer": "'knotify event ID' (or 'knotify events: ID, ID, ...')",
    "incident": "the alert's incident (default grouping): its cluster's hosts, e.g. 'lb1,lb2'",
}
#: Every field an alert template may name: the event's and the alert's.
KNOWN_FIELDS = {**FIELDS, **ALERT_FIELDS}

DEFAULT_TITLE = "[{hosts}] {headline}"
DEFAULT_LINE = "{when} {host} {kind} {subject}: {change}"
DEFAULT_BODY = "{lines}\n\n{footer}"
FORMATS = ("text", "markdown", "html")

#: States people must hear about: a failure type in apprise, and repeated while they last.
BAD_STATES = frozenset({"FAULT", "DOWN", "SPLIT_BRAIN", "NO_MASTER", "PEER_SILENT"})
_GOOD_STATES = frozenset({"MASTER", "UP", "OK", "MASTER_BACK", "PEER_BACK",
                          "SPLIT_BRAIN_RESOLVED"})
_TYPE_RANK = {"info": 0, "success": 1, "warning": 2, "failure": 3}
MAX_TITLE = 250
MAX_NAMES = 6
#: The item field with the hosts of its incident ("lb1,lb2"), set when grouping by
#: incident (knotify.alerts.incident): such items read as one incident.
HOSTS_FIELD = "incident_hosts"
#: The item field set (to the state it left) on the alert of an event that a rule pages
#: only because it ends an incident that rule paged for (``send_resolved``: FAULT ->
#: BACKUP for a rule on FAULT). It says the condition ended; the new state is not paged.
ENDS_FIELD = "ends_incident"


def template(text: str) -> Template:
    """An alert template; TemplateError names an unknown field."""
    return Template(text, KNOWN_FIELDS)


@dataclass(slots=True, frozen=True)
class Templates:
    title: str = DEFAULT_TITLE
    body: str = DEFAULT_BODY
    line: str = DEFAULT_LINE

    def over(self, overrides: Mapping[str, str | None]) -> Templates:
        """These templates with ``overrides`` (title/body/line) applied where set."""
        return Templates(
            overrides.get("title") or self.title,
            overrides.get("body") or self.body,
            overrides.get("line") or self.line,
        )


@dataclass(slots=True)
class Item:
    """One event's part of a message."""

    alert: str
    fields: dict[str, str]
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Rendered:
    title: str
    body: str
    notify_type: str


def _details(fields: Mapping[str, str]) -> str:
    parts = []
    if fields.get("prio"):
        parts.append(f"prio {fields['prio']}")
    if fields.get("duration") and fields.get("prev_state") not in (None, "", "INIT"):
        parts.append(f"after {fields['duration']} in {fields['prev_state']}")
    return f" ({', '.join(parts)})" if parts else ""


def arrow(kind: str, prev_state: str, state: str) -> str:
    """``BACKUP -> MASTER``; a CLUSTER or PEER event raised from no condition is just its
    state (``SPLIT_BRAIN``), since what came before it was no state at all."""
    if kind in SYNTHETIC_KINDS and prev_state in (NO_CONDITION, INIT, ""):
        return state
    return f"{prev_state} -> {state}"


def detail_text(subject: str, detail: str) -> str:
    """A CLUSTER/PEER event's detail without the ``SUBJECT: `` it starts with."""
    lead = f"{subject}: "
    return detail[len(lead):] if subject and detail.startswith(lead) else detail


def change_text(alert: str, fields: Mapping[str, str], *, count: int = 0, window: str = "",
                stable: str = "", since: str = "") -> str:
    """The ``change`` field: what this item says happened."""
    state = fields.get("state", "")
    if alert == REPEAT:
        return f"still {state}" + (f" (for {since})" if since else "")
    if alert == FLAPPING:
        return (f"flapping: {count} changes in {window}, now {state}; alerts paused until it "
                f"is stable for {stable}")
    if alert == STABLE:
        return (f"stable again: {state} for {stable}"
                + (f" ({count} changes not alerted)" if count else ""))
    if alert == TEST:
        return "test message"
    cls = fields.get("class", "transition")
    if fields.get("kind") in SYNTHETIC_KINDS:
        said = (arrow(fields.get("kind", ""), fields.get("prev_state", ""), state)
                if cls == "transition" else fields.get("reported", state))
        detail = detail_text(fields.get("subject", ""), fields.get("detail", ""))
        return f"{said}: {detail}" if detail else said
    if cls == "transition":
        return f"{fields.get('prev_state', '')} -> {state}{_details(fields)}"
    reported = fields.get("reported", state)
    if cls == "notice":
        return f"{reported} (now {state})" if reported != state else reported
    return f"{state} (reported again){_details(fields) if fields.get('prio') else ''}"


def _short(item: Item) -> str:
    f = item.fields
    state = f.get("state", "")
    if item.alert == REPEAT:
        return f"still {state}"
    if item.alert == FLAPPING:
        return "is flapping"
    if item.alert == STABLE:
        return f"stable again ({state})"
    if item.alert == TEST:
        return "test"
    if f.get("class", "transition") == "transition":
        return arrow(f.get("kind", ""), f.get("prev_state", ""), state)
    return f.get("reported", state)


def headline(items: Sequence[Item]) -> str:
    """``VI_1 BACKUP -> MASTER``; ``G1, VI_1, VI_2 -> MASTER``; ``3 changes: ...``."""
    if len(items) == 1:
        return f"{items[0].fields.get('subject', '')} {_short(items[0])}"
    names = [i.fields.get("subject", "") for i in items]
    more = f" +{len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else ""
    states = {i.fields.get("state") for i in items}
    if (len(states) == 1 and all(i.alert == FIRING for i in items)
            and all(i.fields.get("class", "transition") == "transition" for i in items)):
        return f"{', '.join(names[:MAX_NAMES])}{more} -> {states.pop()}"
    shown = [f"{i.fields.get('subject', '')} {_short(i)}" for i in items[:MAX_NAMES]]
    return f"{len(items)} changes: {', '.join(shown)}{more}"


def notify_type(items: Sequence[Item]) -> str:
    """apprise's notify type for the message: the most serious of its items."""
    best = "info"
    for item in items:
        state = item.fields.get("state", "")
        if item.alert == REPEAT or state in BAD_STATES:
            kind = "failure"
        elif item.alert == FLAPPING or state in ("STOP", "DELETED"):
            kind = "warning"
        elif item.alert == STABLE or state in _GOOD_STATES:
            kind = "success"
        else:
            kind = "info"
        if _TYPE_RANK[kind] > _TYPE_RANK[best]:
            best = kind
    return best


def _render(text: str, fallback: str, fields: dict[str, str]) -> str:
    try:
        return template(text).render(fields)
    except TemplateError:
        # Checked at config load; a template from an older config that no longer
        # parses must still let the alert out.
        return template(fallback).render(fields)


def compose(items: Sequence[Item], templates: Templates, receiver: str = "",
            fold: int = 0) -> Rendered:
    """One message for ``items`` (oldest first): title, body and apprise notify type.

    Items grouped by incident (they carry its hosts) read as one incident: every host
    involved in the title, a headline per host and change, and the lines of at most
    ``fold`` subjects (0: all), the rest counted ("... and 288 more instances").
    """
    if not items:
        raise ValueError("a message needs at least one item")
    if items[0].fields.get(HOSTS_FIELD):
        return _compose_incident(items, templates, receiver, fold)
    lines = []
    for item in items:
        fields = _fields(item, receiver)
        lines.append(_render(templates.line, DEFAULT_LINE, fields))
    lead = _fields(items[0], receiver)
    ids = list(dict.fromkeys(i.fields.get("id", "") for i in items))
    hosts = list(dict.fromkeys(h for i in items for h in _involved(i.fields)))
    lead.update({
        "headline": headline(items),
        "count": str(len(items)),
        "lines": "\n".join(lines),
        "ids": ", ".join(ids),
        "hosts": ", ".join(hosts),
        "footer": (f"knotify event {ids[0]}" if len(ids) == 1
                   else f"knotify events: {', '.join(ids)}"),
    })
    return _finish(items, templates, lead)


def _finish(items: Sequence[Item], templates: Templates, lead: dict[str, str]) -> Rendered:
    title = " ".join(_render(templates.title, DEFAULT_TITLE, lead).split())
    if len(title) > MAX_TITLE:
        title = title[: MAX_TITLE - 3] + "..."
    body = _render(templates.body, DEFAULT_BODY, lead)
    return Rendered(title, body, notify_type(items))


def _involved(fields: Mapping[str, str]) -> list[str]:
    text = fields.get("involved") or fields.get("host", "")
    return [h for h in text.split(", ") if h]


def _fields(item: Item, receiver: str) -> dict[str, str]:
    fields = {name: "" for name in KNOWN_FIELDS}
    fields.update(item.fields)
    fields.update(item.extra)
    fields["alert"] = item.alert
    fields["receiver"] = receiver
    if not fields.get("change"):
        fields["change"] = change_text(item.alert, item.fields)
    fields.setdefault("headline", "")
    if not fields["headline"]:
        fields["headline"] = headline([item])
    fields["count"] = fields["count"] or "1"
    fields["ids"] = fields["ids"] or fields.get("id", "")
    fields["hosts"] = fields["hosts"] or ", ".join(_involved(fields))
    if not fields["when"] and fields.get("ts_ns", "").isdigit():
        fields["when"] = iso_time(int(fields["ts_ns"]))  # queued by an older knotify
    return fields


# -- one incident: many hosts, many instances --------------------------------------------

#: What a message of many subjects calls them, by their kinds.
_NOUNS = {frozenset({INSTANCE}): "instances", frozenset({GROUP}): "sync groups",
          frozenset({INSTANCE, GROUP}): "instances and sync groups",
          frozenset({CLUSTER}): "clusters", frozenset({PEER}): "hosts"}


def _noun(items: Sequence[Item]) -> str:
    return _NOUNS.get(frozenset(i.fields.get("kind", "") for i in items), "subjects")


def incident_headline(items: Sequence[Item]) -> str:
    """``VI_1: lb1 MASTER -> FAULT, lb2 BACKUP -> MASTER``; ``300 instances: lb1 MASTER ->
    FAULT (300), lb2 BACKUP -> MASTER (300)``: what moved, per host and change."""
    subjects = list(dict.fromkeys(i.fields.get("subject", "") for i in items))
    moves: dict[str, int] = {}
    for item in items:
        what = _short(item)
        if item.fields.get("kind") != CLUSTER:  # a CLUSTER event's host is the router
            what = f"{item.fields.get('host', '')} {what}"
        moves[what] = moves.get(what, 0) + 1
    shown = [f"{what} ({n})" if len(subjects) > 1 and n > 1 else what
             for what, n in list(moves.items())[:MAX_NAMES]]
    if len(moves) > MAX_NAMES:
        shown.append(f"+{len(moves) - MAX_NAMES} more")
    lead = subjects[0] if len(subjects) == 1 else f"{len(subjects)} {_noun(items)}"
    return f"{lead}: {', '.join(shown)}"


def fold_lines(items: Sequence[Item], lines: Sequence[str], fold: int) -> list[str]:
    """The lines of the first ``fold`` subjects (each subject's lines together), then
    ``... and N more <noun>`` for the rest; ``fold`` 0 keeps them all."""
    by_subject: dict[str, list[str]] = {}
    for item, line in zip(items, lines, strict=True):
        by_subject.setdefault(item.fields.get("subject", ""), []).append(line)
    subjects = list(by_subject)
    kept = subjects if fold <= 0 else subjects[:fold]
    out = [line for subject in kept for line in by_subject[subject]]
    rest = len(subjects) - len(kept)
    if rest:
        hidden = sum(len(by_subject[s]) for s in subjects[len(kept):])
        out.append(f"... and {rest} more {_noun(items)}"
                   + (f" ({hidden} changes)" if hidden != rest else ""))
    return out


def _compose_incident(items: Sequence[Item], templates: Templates, receiver: str,
                      fold: int) -> Rendered:
    lines = [_render(templates.line, DEFAULT_LINE, _fields(item, receiver)) for item in items]
    lead = _fields(items[0], receiver)
    ids = list(dict.fromkeys(i.fields.get("id", "") for i in items))
    hosts: list[str] = []
    for item in items:
        if item.fields.get("kind") in SYNTHETIC_KINDS and item.fields.get("involved"):
            # A condition names the hosts it is about (a split brain: its MASTERs),
            # not every host of the cluster nor the router that noticed it.
            named: Sequence[str] = _involved(item.fields)
        else:
            named = (item.fields.get("host", ""), *item.fields.get(HOSTS_FIELD, "").split(","))
        for host in named:
            if host and host not in hosts and not (host == item.fields.get("host")
                                                   and item.fields.get("kind") == CLUSTER):
                hosts.append(host)
    if not hosts:
        hosts = list(dict.fromkeys(i.fields.get("host", "") for i in items))
    single_host = len(hosts) <= 1
    shown_ids = ids if fold <= 0 or len(ids) <= fold else ids[:fold]
    footer = (f"knotify event {ids[0]}" if len(ids) == 1
              else f"knotify events: {', '.join(shown_ids)}"
              + (f" ... and {len(ids) - len(shown_ids)} more" if len(shown_ids) < len(ids)
                 else ""))
    lead.update({
        "headline": headline(items) if single_host else incident_headline(items),
        "count": str(len(items)),
        "lines": "\n".join(fold_lines(items, lines, fold)),
        "ids": ", ".join(ids),
        "hosts": ", ".join(sorted(hosts)),
        "footer": footer,
    })
    return _finish(items, templates, lead)
