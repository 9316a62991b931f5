"""Silences: matchers with a time window that mute alerts (and, where a rule says so, exec).

A silence is a list of matchers that must all hold, e.g. ``host=node1 name=VI_*
state!=BACKUP``. Values are globs as in rules (``*``, ``?``; ``[`` is literal)
and a comma separates alternatives (``state=FAULT,STOP``). ``kind`` and
``state`` ignore case. Silences live in the journal (table ``silences``) and are
created, listed and expired through the router (``knotify silence ...``); their
rows are :mod:`knotify.store.silences`'.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from knotify.clock import SYSTEM, Clock
from knotify.errors import SilenceError
from knotify.rules import Pattern
from knotify.store.silences import SilenceRow, SilenceRows

#: What a matcher can name (``from`` is the previous state; ``receiver`` only ever
#: matches alerts, so a silence naming it never mutes an exec action).
MATCH_FIELDS = ("host", "kind", "name", "vs", "subject", "state", "from", "rule", "source",
                "receiver")
_UPPER = frozenset({"kind", "state", "from"})
MAX_MATCHERS = 32



@dataclass(slots=True, frozen=True)
class Matcher:
    field: str
    negate: bool
    pattern: Pattern
    text: str

    def __call__(self, values: Mapping[str, str]) -> bool:
        if self.field == "state":
            candidates = [values.get("state", ""), values.get("reported", "")]
            hit = any(self.pattern(v) for v in candidates if v)
        else:
            hit = self.pattern(values.get(self.field, ""))
        return hit != self.negate


def parse_matcher(text: str) -> Matcher:
    """``field=glob`` or ``field!=glob``; SilenceError says what is wrong."""
    raw = text.strip()
    if "!=" in raw:
        name, _, value = raw.partition("!=")
        negate = True
    elif "=" in raw:
        name, _, value = raw.partition("=")
        negate = False
    else:
        raise SilenceError(f"matcher {text!r} must be FIELD=VALUE or FIELD!=VALUE, "
                           f"e.g. name=VI_1 or host=node*")
    name = name.strip().lower()
    if name == "prev_state":
        name = "from"
    if name not in MATCH_FIELDS:
        raise SilenceError(f"matcher {text!r}: unknown field {name!r}; expected one of "
                           + ", ".join(MATCH_FIELDS))
    value = value.strip()
    if not value:
        raise SilenceError(f"matcher {text!r} has no value (use * to match anything)")
    alternatives = [v.strip() for v in value.split(",") if v.strip()]
    upper = name in _UPPER
    if any(v.startswith("!") for v in alternatives):
        raise SilenceError(f"matcher {text!r}: write {name}!=VALUE to negate")
    pattern = Pattern.parse(alternatives, upper=upper)
    return Matcher(name, negate, pattern, f"{name}{'!=' if negate else '='}{value}")


def parse_matchers(texts: Sequence[str]) -> list[Matcher]:
    if not texts:
        raise SilenceError("a silence needs at least one matcher (host=* silences everything)")
    if len(texts) > MAX_MATCHERS:
        raise SilenceError(f"at most {MAX_MATCHERS} matchers")
    return [parse_matcher(t) for t in texts]


@dataclass(slots=True)
class Silence:
    id: int
    matchers: list[Matcher]
    starts_ns: int
    ends_ns: int
    created_ns: int
    by: str
    reason: str
    expired_ns: int | None = None

    def active(self, now_ns: int) -> bool:
        return self.expired_ns is None and self.starts_ns <= now_ns < self.ends_ns

    def status(self, now_ns: int) -> str:
        """``pending``, ``active``, ``expired`` (ended by hand: ``knotify silence expire``)
        or ``ended`` (its time ran out)."""
        if self.expired_ns is not None:
            return "expired"
        if now_ns < self.starts_ns:
            return "pending"
        return "active" if now_ns < self.ends_ns else "ended"

    def matches(self, values: Mapping[str, str]) -> bool:
        return all(m(values) for m in self.matchers)

    def describe(self) -> str:
        """``silence 3 (maintenance, by root, until 14:00:00)`` for outcomes and history."""
        import datetime as dt

        until = dt.datetime.fromtimestamp(self.ends_ns / 1e9).astimezone()
        return (f"silence {self.id} ({self.reason}, by {self.by or '?'}, until "
                f"{until.strftime('%Y-%m-%d %H:%M:%S')})")

    def to_dict(self, now_ns: int | None = None) -> dict[str, Any]:
        now = time.time_ns() if now_ns is None else now_ns
        status = self.status(now)
        return {
            "id": self.id, "matchers": [m.text for m in self.matchers],
            "starts_ns": self.starts_ns, "ends_ns": self.ends_ns, "created_ns": self.created_ns,
            "by": self.by, "reason": self.reason, "expired_ns": self.expired_ns,
            "status": status,
            # When it really stopped muting: expired by hand, or its time ran out.
            "ended_ns": self.expired_ns if status == "expired"
            else self.ends_ns if status == "ended" else None,
        }


def first_match(silences: Sequence[Silence], values: Mapping[str, str],
                now_ns: int) -> Silence | None:
    """The first active silence that matches ``values`` (event fields + receiver)."""
    for silence in silences:
        if silence.active(now_ns) and silence.matches(values):
            return silence
    return None


def _silence(row: SilenceRow) -> Silence:
    return Silence(row.id, parse_matchers(row.matchers), row.starts_ns, row.ends_ns,
                   row.created_ns, row.by, row.reason, row.expired_ns)


class SilenceStore:
    """Silences (:class:`~knotify.store.silences.SilenceRows`), with the open ones cached
    for matching on the hot path."""

    def __init__(self, rows: SilenceRows, clock: Clock = SYSTEM) -> None:
        self.rows = rows
        self.clock = clock
        self.database = rows.database
        self._open: list[Silence] = []
        self.refresh()

    def refresh(self) -> None:
        self._open = [_silence(r) for r in self.rows.open(self.clock.time_ns())]

    def match(self, values: Mapping[str, str], now_ns: int | None = None) -> Silence | None:
        if not self._open:
            return None
        return first_match(self._open, values,
                           self.clock.time_ns() if now_ns is None else now_ns)

    def add(self, matchers: Sequence[str], duration_s: float, reason: str, by: str = "",
            starts_ns: int | None = None) -> Silence:
        parsed = parse_matchers(matchers)
        if not reason.strip():
            raise SilenceError("a silence needs a reason (--reason TEXT)")
        if not 0 < duration_s <= 366 * 86400:
            raise SilenceError("a silence lasts more than 0 and at most 366 days")
        now = self.clock.time_ns()
        start = now if starts_ns is None else starts_ns
        end = start + int(duration_s * 1e9)
        texts = [m.text for m in parsed]
        with self.database.transaction():
            rowid = self.rows.add(texts, start, end, now, by[:200], reason.strip()[:1000])
        self.refresh()
        return Silence(rowid, parsed, start, end, now, by[:200], reason.strip()[:1000])

    def expire(self, silence_id: int) -> Silence:
        now = self.clock.time_ns()
        with self.database.transaction():
            row = self.rows.get(silence_id)
            if row is None:
                raise SilenceError(f"no silence {silence_id}")
            silence = _silence(row)
            if silence.expired_ns is not None:
                raise SilenceError(f"silence {silence_id} is already expired")
            self.rows.set_expired(silence_id, now)
        self.refresh()
        silence.expired_ns = now
        return silence

    def list(self, include_old: bool = False) -> list[Silence]:
        rows = self.rows.every() if include_old else self.rows.open(self.clock.time_ns())
        return [_silence(r) for r in rows]
