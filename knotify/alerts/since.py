"""Since when each alert rule exists: flap control counts only what happened since then.

Without it, enabling an alert rule on an instance that had changed a few times made
the first real failover read "VI_1 is flapping ... alerts paused": transitions from
before the rule existed counted. A rule *exists* from the first load (start or reload)
that has it with its current definition, its id and what decides which events it
alerts on (its matchers, ``on`` classes and ``send_resolved``). Hence:

- a restart, or a reload that leaves the rule alone or changes only its receivers,
  templates or repeat settings, keeps it (the rule existed while the router was down);
- a reload that changes its matchers, ``on`` or ``send_resolved`` makes a new rule: it
  counts from that
  reload, and a flap of the old definition no longer holds its alerts back;
- a rule absent from a loaded config stops existing; put back later, it is new.

Kept in the journal (:mod:`knotify.store.rule_since`, one row per alert stream
``RULE#INDEX``), so restarts keep it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from knotify.store.rule_since import RuleSinceRows

if TYPE_CHECKING:
    from knotify.rules import Rule


def definition(rule: Rule) -> str:
    """What decides which events the rule alerts on, as a short digest."""
    text = repr((rule.match, sorted(rule.on), rule.send_resolved))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def streams(rules: Iterable[Rule]) -> dict[str, str]:
    """Every alert stream of ``rules`` (``RULE#INDEX``) with its rule's definition."""
    out: dict[str, str] = {}
    for rule in rules:
        digest = definition(rule)
        for index, action in enumerate(rule.actions):
            if action.pages:
                out[f"{rule.id}#{index}"] = digest
    return out


class RuleSince:
    """The ``alert_rule_since`` rows and their copy in memory."""

    def __init__(self, rows: RuleSinceRows) -> None:
        self.rows = rows
        self._since: dict[str, int] = {}

    def loaded(self, rules: Iterable[Rule], now_ns: int) -> list[str]:
        """A config was loaded: record new and changed alert streams, forget removed ones.

        Returns the streams whose rule is new or changed (their flap state starts afresh).
        Runs in the caller's transaction if there is one; raises JournalError if the
        journal cannot take it.
        """
        want = streams(rules)
        with self.rows.database.transaction():
            known = self.rows.known()
            changed = [s for s, d in want.items() if known.get(s, ("", 0))[0] != d]
            self.rows.forget(s for s in known if s not in want)
            self.rows.put({s: want[s] for s in changed}, now_ns)
        self._since = {s: known[s][1] for s in want if s not in changed}
        self._since.update({s: now_ns for s in changed})
        return changed

    def since(self, stream: str) -> int:
        """When the stream's rule began to exist (ns); 0 if not known (count everything)."""
        return self._since.get(stream, 0)
