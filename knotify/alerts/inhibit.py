"""Inhibition: a condition that is on mutes the alerts it explains (Alertmanager's inhibit_rules).

``[[alerts.inhibit]]`` rules have ``source_matchers``, ``target_matchers`` and
``equal``. An alert is *inhibited* while some key's **current** state (the
tracker's: a PEER key in PEER_SILENT, a CLUSTER key in SPLIT_BRAIN) matches the
source matchers and has the same values as the alert for every ``equal`` field,
and the alert matches the target matchers. When the source's state moves on
(PEER_BACK, SPLIT_BRAIN_RESOLVED) it inhibits nothing any more, as in
Alertmanager. A key never inhibits its own alerts.

Matchers are the silences' (``FIELD=GLOB``, ``FIELD!=GLOB``) plus ``cluster``,
the cluster label (a CLUSTER event's name; an instance's ``[[cluster.group]]``
label or its name). Source matchers see what a current state has: ``host``,
``kind``, ``name``, ``vs``, ``subject``, ``state``, ``cluster``. Pure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from knotify.alerts.incident import ClusterIndex
from knotify.alerts.silence import MATCH_FIELDS, Matcher, parse_matcher
from knotify.errors import SilenceError
from knotify.event import Key
from knotify.schema import Table
from knotify.vocab import CLUSTER

if TYPE_CHECKING:
    from knotify.tracker import KeyState

#: What a source matcher can name: the fields of a current state.
SOURCE_FIELDS = ("host", "kind", "name", "vs", "subject", "state", "cluster")
TARGET_FIELDS = (*MATCH_FIELDS, "cluster")
EQUAL_FIELDS = ("host", "kind", "name", "vs", "subject", "cluster")


def parse(text: str, allowed: Sequence[str]) -> Matcher:
    """A matcher over ``allowed`` fields (``cluster`` included); SilenceError says why."""
    name = text.partition("=")[0].rstrip("!").strip().lower()
    if name == "cluster":
        # the silences' parser knows no cluster field: parse it as a name, then rename
        m = parse_matcher("name" + text.strip()[len("cluster"):])
        return dataclasses.replace(m, field="cluster", text="cluster" + m.text[len("name"):])
    m = parse_matcher(text)
    if m.field not in allowed:
        raise SilenceError(f"matcher {text!r}: {m.field!r} cannot be used here; expected one "
                           f"of {', '.join(allowed)}")
    return m


@dataclass(slots=True, frozen=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()

    def describe(self) -> str:
        text = (f"{' '.join(m.text for m in self.source)} mutes "
                f"{' '.join(m.text for m in self.target) or 'every alert'}")
        return text + (f" with the same {', '.join(self.equal)}" if self.equal else "")


@dataclass(slots=True, frozen=True)
class Inhibition:
    """Why an alert is muted: the rule (1-based) and the source key's current state."""

    rule: int
    key: Key
    state: str
    since_ns: int
    event_id: str

    def describe(self) -> str:
        host, kind, name, vs = self.key
        since = dt.datetime.fromtimestamp(self.since_ns / 1e9).astimezone()
        what = f"{kind} {name}{f' in {vs}' if vs else ''}" + (
            f" on {host}" if kind != CLUSTER and host != name else "")
        return (f"inhibited by {what} {self.state} since {since.strftime('%Y-%m-%d %H:%M:%S')}"
                f" (event {self.event_id}, inhibit rule {self.rule})")


def source_fields(key: Key, ks: KeyState, index: ClusterIndex) -> dict[str, str]:
    host, kind, name, vs = key
    return {"host": host, "kind": kind, "name": name, "vs": vs,
            "subject": f"{name} in {vs}" if vs else name, "state": ks.state,
            "cluster": index.cluster_of(host, kind, name)}


class Active:
    """The sources that are on now, per rule, by their ``equal`` values.

    Built once per engine turn from the tracker's states (one pass), then asked
    for each alert of that turn.
    """

    def __init__(self, rules: Sequence[InhibitRule], states: Mapping[Key, KeyState],
                 index: ClusterIndex) -> None:
        self.rules = rules
        self.index = index
        self._on: list[dict[tuple[str, ...], list[tuple[Key, KeyState]]]] = [
            {} for _ in rules]
        if not rules:
            return
        for key, ks in states.items():
            values = source_fields(key, ks, index)
            for n, rule in enumerate(rules):
                if all(m(values) for m in rule.source):
                    self._on[n].setdefault(tuple(values[f] for f in rule.equal),
                                           []).append((key, ks))

    def match(self, fields: Mapping[str, str]) -> Inhibition | None:
        """What inhibits an alert with these (event template) fields, if anything."""
        if not self.rules:
            return None
        values = dict(fields)
        values.setdefault("cluster", self.index.cluster_of(
            fields.get("host", ""), fields.get("kind", ""), fields.get("name", "")))
        own = (values.get("host", ""), values.get("kind", ""), values.get("name", ""),
               values.get("vs", ""))
        for n, rule in enumerate(self.rules):
            sources = self._on[n].get(tuple(values.get(f, "") for f in rule.equal))
            if not sources or not all(m(values) for m in rule.target):
                continue
            for key, ks in sources:
                if key != own and ks.event_id != values.get("id"):
                    return Inhibition(n + 1, key, ks.state, ks.since_ns, ks.event_id)
        return None


def parse_rules(alerts: Table) -> tuple[InhibitRule, ...]:
    """Every ``[[alerts.inhibit]]``; ConfigError names the rule's key and what is wrong."""
    out: list[InhibitRule] = []
    for t in alerts.tables("inhibit"):
        found: dict[str, tuple[Matcher, ...]] = {}
        for key, allowed in (("source_matchers", SOURCE_FIELDS),
                             ("target_matchers", TARGET_FIELDS)):
            texts = t.strings(key, [], allow_str=True)
            if not texts and key == "source_matchers":
                raise t.error(key, "needs at least one matcher, e.g. "
                              '["kind=PEER", "state=PEER_SILENT"]')
            try:
                found[key] = tuple(parse(text, allowed) for text in texts)
            except SilenceError as exc:
                raise t.error(key, str(exc)) from None
        equal = t.strings("equal", [], allow_str=True)
        for name in equal:
            if name not in EQUAL_FIELDS:
                raise t.error("equal", f"unknown field {name!r}; expected some of "
                              + ", ".join(EQUAL_FIELDS))
        t.done()
        out.append(InhibitRule(found["source_matchers"], found["target_matchers"],
                               tuple(dict.fromkeys(equal))))
    return tuple(out)
