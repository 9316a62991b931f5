"""Rules: which events fire which actions. Matching is pure and cheap.

A matcher value is a string or a list of strings. ``*`` and ``?`` are wildcards
(``[`` is literal, because keepalived's server names are written ``[ip]:tcp:port``);
a leading ``!`` negates. Positive patterns are alternatives; negative ones must
all fail. ``from = ["!INIT", "!STOP"]`` therefore means "not from start-up".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from knotify.actions.base import Action
from knotify.event import Event
from knotify.tracker import Transition
from knotify.vocab import (
    INCIDENT_STATES,
    NOTICE,
    REPEAT,
    RULE_CLASSES,
    SYNTHETIC_KINDS,
    TRANSITION,
)


@lru_cache(maxsize=4096)
def _glob_match(pattern: str, value: str) -> bool:
    # Iterative wildcard match with backtracking over the last '*': linear enough for names.
    p = v = 0
    star = -1
    mark = 0
    while v < len(value):
        # '*' first: a value holding a '*' must not match it as a literal and lose the
        # wildcard ('*' against '*1' is a match).
        if p < len(pattern) and pattern[p] == "*":
            star = p
            mark = v
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == value[v]):
            p += 1
            v += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            v = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


@dataclass(slots=True, frozen=True)
class Pattern:
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    upper: bool = False

    @classmethod
    def parse(cls, values: list[str], upper: bool = False) -> Pattern:
        pos: list[str] = []
        neg: list[str] = []
        for raw in values:
            value = raw.upper() if upper else raw
            if value.startswith("!"):
                neg.append(value[1:])
            else:
                pos.append(value)
        return cls(tuple(pos), tuple(neg), upper)

    def __call__(self, value: str) -> bool:
        if self.upper:
            value = value.upper()
        for pattern in self.negative:
            if _glob_match(pattern, value):
                return False
        if not self.positive:
            return True
        return any(_glob_match(pattern, value) for pattern in self.positive)

    def __bool__(self) -> bool:
        return bool(self.positive or self.negative)

    def describe(self) -> str:
        return ",".join([*self.positive, *("!" + n for n in self.negative)])


@dataclass(slots=True, frozen=True)
class Match:
    kind: Pattern = field(default_factory=Pattern)
    name: Pattern = field(default_factory=Pattern)
    vs: Pattern = field(default_factory=Pattern)
    host: Pattern = field(default_factory=Pattern)
    state: Pattern = field(default_factory=Pattern)
    prev: Pattern = field(default_factory=Pattern)
    source: Pattern = field(default_factory=Pattern)
    prio_min: int | None = None
    prio_max: int | None = None
    #: No pattern and no prio range: it matches every event but knotify's own.
    matches_all: bool = field(init=False, repr=False, compare=False)
    #: The same without state, from and prio (what :meth:`ends` checks besides the state);
    #: None without state patterns (then nothing ends).
    _where: Match | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        everything = not (self.kind or self.name or self.vs or self.host or self.state
                          or self.prev or self.source or self.prio_min is not None
                          or self.prio_max is not None)
        object.__setattr__(self, "matches_all", everything)  # (frozen: set once, here)
        if self.state.positive:
            object.__setattr__(self, "_where", Match(self.kind, self.name, self.vs, self.host,
                                                     source=self.source))

    def __call__(self, ev: Event, tr: Transition) -> bool:
        if self.matches_all:  # checked per event per rule: the common "every event" rule
            return ev.kind not in SYNTHETIC_KINDS
        if self.kind and not self.kind(ev.kind):
            return False
        # knotify's own CLUSTER/PEER events reach only rules whose kind names them, so a
        # rule written for keepalived's events (name = "VI_1") does not fire for them too.
        if ev.kind in SYNTHETIC_KINDS and not self.kind.positive:
            return False
        if self.name and not self.name(ev.name):
            return False
        if self.vs and not self.vs(ev.vs):
            return False
        if self.host and not self.host(ev.host):
            return False
        # A state pattern matches the state the subject is in or the word keepalived used
        # (so "MASTER_RX_LOWER_PRI" can be matched by name), but a negation must hold for both.
        if self.state and not self._state(ev.state, tr.state):
            return False
        if self.prev and not self.prev(tr.prev_state):
            return False
        if self.source and not self.source(ev.source):
            return False
        if self.prio_min is not None or self.prio_max is not None:
            if ev.prio is None:
                return False
            if self.prio_min is not None and ev.prio < self.prio_min:
                return False
            if self.prio_max is not None and ev.prio > self.prio_max:
                return False
        return True

    def ends(self, ev: Event, tr: Transition) -> bool:
        """``ev`` ends an incident this matches: it leaves one of :data:`INCIDENT_STATES`
        that the state patterns name (FAULT -> BACKUP, SPLIT_BRAIN -> SPLIT_BRAIN_RESOLVED,
        PEER_SILENT -> PEER_BACK), for a subject this matches (kind, name, vs, host, source)."""
        prev = tr.prev_state
        if prev not in INCIDENT_STATES or self._where is None or not self._state(prev, prev):
            return False
        return self._where(ev, tr)

    def _state(self, reported: str, effective: str) -> bool:
        for pattern in self.state.negative:
            if _glob_match(pattern, reported) or _glob_match(pattern, effective):
                return False
        if not self.state.positive:
            return True
        return any(
            _glob_match(p, reported) or _glob_match(p, effective) for p in self.state.positive
        )


@dataclass(slots=True, frozen=True)
class Rule:
    id: str
    match: Match
    on: frozenset[str] = frozenset({TRANSITION})
    actions: tuple[Action, ...] = ()
    delay: float = 0.0
    skip_if_superseded: bool = False
    max_age: float | None = None
    description: str = ""
    #: Exec/service/log actions of this rule are skipped (status "silenced") while a
    #: silence matches the event; alert actions always honour silences.
    honor_silences: bool = False
    #: Its alert actions also get the transition that ends an incident its state
    #: patterns name (:meth:`Match.ends`): set for rules with an alert action unless
    #: ``send_resolved = false``.
    send_resolved: bool = False

    @property
    def plain(self) -> bool:
        """No option that makes its actions wait or re-check before they start."""
        return (not self.delay and not self.skip_if_superseded and self.max_age is None
                and not self.honor_silences)

    def fires(self, ev: Event, tr: Transition) -> bool:
        return tr.cls in self.on and (self.match(ev, tr) or (
            self.send_resolved and tr.cls == TRANSITION and self.match.ends(ev, tr)))

    def ends_only(self, ev: Event, tr: Transition) -> bool:
        """It fires for ``ev`` only as the end of an incident: its alerts run, nothing else."""
        return self.send_resolved and not self.match(ev, tr)


def classes_from(value: list[str]) -> frozenset[str]:
    """``on`` values: transition, repeat, notice, or every (= all three)."""
    out: set[str] = set()
    for item in value:
        if item == "every":
            out.update(RULE_CLASSES)
        elif item in RULE_CLASSES:
            out.add(item)
        else:
            raise ValueError(
                f"expected transition, repeat, notice or every, found {item!r}"
            )
    return frozenset(out)


def fired(rules: Sequence[Rule], ev: Event, tr: Transition) -> list[Rule]:
    return [rule for rule in rules if rule.fires(ev, tr)]


__all__ = ["NOTICE", "REPEAT", "TRANSITION", "Match", "Pattern", "Rule", "classes_from", "fired"]
