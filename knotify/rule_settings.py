"""The config's ``[[rule]]`` tables turned into :class:`~knotify.rules.Rule` values.

A rule's match patterns are checked against the known kinds and states (a typo is
an error, not a silent miss), and a rule that could never fire is refused with the
reason. Each ``[[rule.action]]`` is parsed by its kind's ``from_config``, found in
the action registry: this module names no action kind.
"""

from __future__ import annotations

from knotify.actions import KINDS as ACTION_KINDS
from knotify.actions.base import Action, ActionSettings
from knotify.rules import Match, Pattern, Rule, classes_from
from knotify.schema import Table
from knotify.vocab import (
    CLUSTER_STATES,
    FIFO_ONLY_STATES,
    INIT,
    KINDS,
    LVS_STATES,
    SYNTHETIC_KINDS,
    SYNTHETIC_STATES,
    TRANSITION,
    UNKNOWN_STATE,
    VRRP_STATES,
)

#: State words a rule may name (wildcards aside): a typo here is an error, not a silent miss.
KNOWN_STATES = frozenset(VRRP_STATES + LVS_STATES + CLUSTER_STATES + (INIT,))
NOTICE_ONLY = frozenset(FIFO_ONLY_STATES + (UNKNOWN_STATE,))


def parse_rules(top: Table, settings: ActionSettings) -> tuple[Rule, ...]:
    """Every ``[[rule]]`` of the config, in order; rule ids are unique."""
    seen: set[str] = set()
    rules: list[Rule] = []
    for table in top.tables("rule"):
        rule = parse_rule(table, settings)
        if rule.id in seen:
            raise table.error("id", f"rule id {rule.id!r} is used twice")
        seen.add(rule.id)
        rules.append(rule)
    return tuple(rules)


def _pattern(table: Table, key: str, *, upper: bool = False,
             known: frozenset[str] | None = None) -> Pattern:
    values = table.strings(key, [], allow_str=True)
    pattern = Pattern.parse(values, upper=upper)
    if known is not None:
        for value in (*pattern.positive, *pattern.negative):
            if "*" not in value and "?" not in value and value not in known:
                raise table.error(key, f"unknown value {value!r}; expected one of "
                                  + ", ".join(sorted(known)))
    return pattern


def parse_rule(t: Table, settings: ActionSettings) -> Rule:
    rule_id = t.text("id", t.where.replace("rule[", "rule-").rstrip("]"))
    prio_min = prio_max = None
    prio = t.raw("prio")
    if prio is not None:
        if (not isinstance(prio, list) or len(prio) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in prio)):
            raise t.error("prio", "expected [MIN, MAX], e.g. prio = [100, 255]")
        if not 0 <= prio[0] <= prio[1] <= 255:
            raise t.error("prio", f"expected 0 <= MIN <= MAX <= 255, found {prio}; "
                          "this range would never match")
        prio_min, prio_max = prio
    match = Match(
        kind=_pattern(t, "kind", upper=True, known=frozenset(KINDS + SYNTHETIC_KINDS)),
        name=_pattern(t, "name"),
        vs=_pattern(t, "vs"),
        host=_pattern(t, "host"),
        state=_pattern(t, "state", upper=True, known=KNOWN_STATES),
        prev=_pattern(t, "from", upper=True, known=KNOWN_STATES),
        source=_pattern(t, "source"),
        prio_min=prio_min,
        prio_max=prio_max,
    )
    try:
        on = classes_from(t.strings("on", [TRANSITION], allow_str=True))
    except ValueError as exc:
        raise t.error("on", str(exc)) from None
    if (match.state.positive and on == {TRANSITION}
            and all(s in NOTICE_ONLY for s in match.state.positive)):
        raise t.error("state", f"{', '.join(match.state.positive)} never changes the state, "
                      "so this rule would never fire; add on = \"every\" (or \"notice\")")
    synthetic = [s for s in match.state.positive if s in SYNTHETIC_STATES]
    if synthetic and not any(match.kind.positive and match.kind(k) for k in SYNTHETIC_KINDS):
        raise t.error("state", f"{', '.join(synthetic)} is a state of knotify's own CLUSTER "
                      "and PEER events, which reach only rules that name their kind; add "
                      "kind = [\"CLUSTER\", \"PEER\"] (or the one you mean)")
    actions: list[Action] = []
    for a in t.tables("action"):
        kind = a.text("type", choices=tuple(ACTION_KINDS))
        actions.append(ACTION_KINDS[kind].from_config(a, settings))
        a.done()
    if not actions:
        raise t.error("action", "the rule has no [[rule.action]]")
    rule = Rule(
        id=rule_id,
        match=match,
        on=on,
        actions=tuple(actions),
        delay=t.duration("delay", 0),
        skip_if_superseded=t.flag("skip_if_superseded", False),
        max_age=t.opt_duration("max_age"),
        description=t.text("description", ""),
        honor_silences=t.flag("honor_silences", False),
        send_resolved=(t.flag("send_resolved", True)
                       and any(action.pages for action in actions)),
    )
    t.done()
    return rule
