"""Rule matching: glob semantics, negation, states (effective and reported), from, prio, on."""

from __future__ import annotations

import pytest

from knotify import config as configmod
from knotify.actions.log import LogAction
from knotify.event import Event
from knotify.rules import Match, Pattern, Rule, _glob_match, classes_from, fired
from knotify.templates import Template
from knotify.tracker import Tracker, Transition
from knotify.vocab import INIT, NOTICE, REPEAT, STALE, TRANSITION


def ev(state: str = "MASTER", *, kind: str = "INSTANCE", name: str = "VI_1", vs: str = "",
       host: str = "kb1", prio: int | None = 100, source: str = "hook") -> Event:
    return Event(id="e0000001", host=host, kind=kind, name=name, state=state, prio=prio,
                 vs=vs, source=source)


def tr(state: str = "MASTER", prev: str = "BACKUP", cls: str = TRANSITION) -> Transition:
    return Transition(cls, state, prev, None, 1)


def rule(match: Match, on: frozenset[str] = frozenset({TRANSITION}), rid: str = "r") -> Rule:
    return Rule(id=rid, match=match, on=on, actions=(LogAction(Template("{name}"), "info"),))


# --------------------------------------------------------------------------- globs


@pytest.mark.parametrize(("pattern", "value", "result"), [
    ("VI_1", "VI_1", True),
    ("VI_1", "VI_10", False),
    ("VI_1", "vi_1", False),
    ("*", "", True),
    ("*", "anything at all", True),
    ("VI_*", "VI_", True),
    ("VI_*", "VI_123", True),
    ("VI_*", "XVI_1", False),
    ("*_1", "VI_1", True),
    ("*_1", "VI_1_2", False),
    ("*web*", "my-web-vip", True),
    ("a*b*c", "aXXbYYc", True),
    ("a*b*c", "aXXcYYb", False),
    ("a*b*c", "abcbc", True),
    ("?", "x", True),
    ("?", "", False),
    ("?", "xy", False),
    ("VI_?", "VI_7", True),
    ("VI_?", "VI_77", False),
    ("??*", "ab", True),
    ("??*", "a", False),
    ("", "", True),
    ("", "x", False),
    ("**", "x", True),
    # '[' is literal: keepalived writes servers as [ip]:proto:port.
    ("[10.0.0.5]:tcp:80", "[10.0.0.5]:tcp:80", True),
    ("[10.0.0.5]:tcp:*", "[10.0.0.5]:tcp:443", True),
    ("[10.0.0.?]:*", "[10.0.0.7]:udp:53", True),
    ("[abc]", "a", False),
    ("[abc]", "[abc]", True),
    ("[!a]", "b", False),
    ("[fd00::*]:*", "[fd00::5]:udp:53", True),
    ("FWM *", "FWM 5", True),
    ("\\*", "\\x", True),  # no escapes: backslash is an ordinary character
    ("\\*", "*", False),
])
def test_glob_semantics(pattern: str, value: str, result: bool) -> None:
    assert _glob_match(pattern, value) is result


def test_glob_is_linear_enough_for_adversarial_patterns() -> None:
    # Classic exponential case for naive backtracking; must answer at once.
    assert _glob_match("a*" * 30 + "b", "a" * 5000) is False


# --------------------------------------------------------------------------- patterns


def test_empty_pattern_matches_everything_and_is_falsy() -> None:
    pattern = Pattern.parse([])
    assert not pattern
    assert pattern("anything")


def test_positive_patterns_are_alternatives() -> None:
    pattern = Pattern.parse(["VI_1", "web-*"])
    assert pattern("VI_1") and pattern("web-a")
    assert not pattern("VI_2")


def test_negative_patterns_must_all_fail() -> None:
    pattern = Pattern.parse(["!VI_test*", "!*_old"])
    assert pattern("VI_1")
    assert not pattern("VI_test3")
    assert not pattern("VI_1_old")


def test_positive_and_negative_combined() -> None:
    pattern = Pattern.parse(["VI_*", "!VI_test*"])
    assert pattern("VI_1")
    assert not pattern("VI_test")
    assert not pattern("web")


def test_only_a_leading_bang_negates() -> None:
    pattern = Pattern.parse(["a!b"])
    assert pattern("a!b") and not pattern("ab")


def test_upper_patterns_are_case_insensitive() -> None:
    pattern = Pattern.parse(["master", "!init"], upper=True)
    assert pattern.positive == ("MASTER",) and pattern.negative == ("INIT",)
    assert pattern("master") and pattern("MASTER")
    assert not Pattern.parse(["!init"], upper=True)("INIT")


def test_describe_lists_positive_then_negative() -> None:
    assert Pattern.parse(["!b", "a", "!c"]).describe() == "a,!b,!c"


# --------------------------------------------------------------------------- match fields


def test_empty_match_matches_any_event() -> None:
    assert Match()(ev(), tr())
    assert Match()(ev("UP", kind="VS", prio=None), tr("UP", INIT))


def test_kind_name_vs_host_source_fields() -> None:
    m = Match(kind=Pattern.parse(["RS"], upper=True), name=Pattern.parse(["[10.0.0.*]:tcp:80"]),
              vs=Pattern.parse(["FWM *"]), host=Pattern.parse(["kb?"]),
              source=Pattern.parse(["fifo"]))
    good = ev("DOWN", kind="RS", name="[10.0.0.5]:tcp:80", vs="FWM 5", prio=None, source="fifo")
    assert m(good, tr("DOWN", "UP"))
    for bad in (
        ev("DOWN", kind="VS", name="[10.0.0.5]:tcp:80", vs="FWM 5", source="fifo"),
        ev("DOWN", kind="RS", name="[10.0.1.5]:tcp:80", vs="FWM 5", source="fifo"),
        ev("DOWN", kind="RS", name="[10.0.0.5]:tcp:80", vs="[1.1.1.1]:tcp:80", source="fifo"),
        ev("DOWN", kind="RS", name="[10.0.0.5]:tcp:80", vs="FWM 5", host="kb10", source="fifo"),
        ev("DOWN", kind="RS", name="[10.0.0.5]:tcp:80", vs="FWM 5", source="hook"),
    ):
        assert not m(bad, tr("DOWN", "UP"))


def test_state_matches_effective_state() -> None:
    m = Match(state=Pattern.parse(["MASTER"], upper=True))
    # A MASTER_PRIORITY notice: reported word differs, effective state is MASTER.
    assert m(ev("MASTER_PRIORITY"), tr("MASTER", "MASTER", NOTICE))


def test_state_matches_reported_word() -> None:
    m = Match(state=Pattern.parse(["MASTER_RX_LOWER_PRI"], upper=True))
    assert m(ev("MASTER_RX_LOWER_PRI"), tr("MASTER", "MASTER", NOTICE))
    assert not m(ev("MASTER"), tr("MASTER", "BACKUP"))


def test_state_negation_must_hold_for_reported_and_effective() -> None:
    m = Match(state=Pattern.parse(["!MASTER"], upper=True))
    assert not m(ev("MASTER_PRIORITY"), tr("MASTER", "MASTER", NOTICE))
    assert not m(ev("MASTER"), tr("MASTER", "BACKUP"))
    assert m(ev("BACKUP"), tr("BACKUP", "MASTER"))
    m2 = Match(state=Pattern.parse(["!MASTER_RX_LOWER_PRI"], upper=True))
    assert not m2(ev("MASTER_RX_LOWER_PRI"), tr("MASTER", "MASTER", NOTICE))
    assert m2(ev("MASTER"), tr("MASTER", "BACKUP"))


def test_state_wildcards() -> None:
    m = Match(state=Pattern.parse(["*_PRIORITY"], upper=True))
    assert m(ev("BACKUP_PRIORITY"), tr("BACKUP", "BACKUP", NOTICE))
    assert not m(ev("BACKUP"), tr("BACKUP", "MASTER"))


def test_from_filters_start_up() -> None:
    m = Match(prev=Pattern.parse(["!INIT"], upper=True))
    assert not m(ev("BACKUP"), tr("BACKUP", INIT))
    assert m(ev("MASTER"), tr("MASTER", "BACKUP"))
    m2 = Match(prev=Pattern.parse(["!INIT", "!STOP"], upper=True))
    assert not m2(ev("BACKUP"), tr("BACKUP", "STOP"))
    assert m2(ev("FAULT"), tr("FAULT", "MASTER"))
    m3 = Match(state=Pattern.parse(["MASTER"], upper=True),
               prev=Pattern.parse(["BACKUP", "FAULT"], upper=True))
    assert m3(ev("MASTER"), tr("MASTER", "FAULT"))
    assert not m3(ev("MASTER"), tr("MASTER", INIT))


@pytest.mark.parametrize(("lo", "hi", "prio", "result"), [
    (100, 255, 100, True), (100, 255, 255, True), (100, 255, 99, False),
    (100, None, 254, True), (None, 50, 50, True), (None, 50, 51, False),
    (0, 0, 0, True), (1, 255, 0, False),
    (0, 255, None, False),  # a short-form hook has no prio: a prio rule does not fire
])
def test_prio_ranges(lo: int | None, hi: int | None, prio: int | None, result: bool) -> None:
    m = Match(prio_min=lo, prio_max=hi)
    assert m(ev(prio=prio), tr()) is result


def test_all_conditions_must_hold() -> None:
    m = Match(name=Pattern.parse(["VI_1"]), state=Pattern.parse(["MASTER"], upper=True),
              prio_min=100)
    assert m(ev(prio=100), tr())
    assert not m(ev(prio=99), tr())
    assert not m(ev(name="VI_2"), tr())
    assert not m(ev("BACKUP"), tr("BACKUP", "MASTER"))


# --------------------------------------------------------------------------- on / fires


def test_classes_from() -> None:
    assert classes_from(["transition"]) == {TRANSITION}
    assert classes_from(["every"]) == {TRANSITION, REPEAT, NOTICE}
    assert classes_from(["repeat", "notice"]) == {REPEAT, NOTICE}
    assert classes_from([]) == frozenset()


@pytest.mark.parametrize("word", ["stale", "invalid", "Transition", "all", ""])
def test_classes_from_rejects_others(word: str) -> None:
    with pytest.raises(ValueError, match="expected transition, repeat, notice or every"):
        classes_from([word])


def test_default_rule_fires_on_transitions_only() -> None:
    r = rule(Match())
    assert r.fires(ev(), tr(cls=TRANSITION))
    assert not r.fires(ev(), tr(cls=REPEAT))
    assert not r.fires(ev(), tr(cls=NOTICE))
    assert not r.fires(ev(), tr(cls=STALE))


def test_every_never_includes_stale_or_invalid() -> None:
    r = rule(Match(), on=classes_from(["every"]))
    assert r.fires(ev(), tr(cls=REPEAT)) and r.fires(ev(), tr(cls=NOTICE))
    assert not r.fires(ev(), tr(cls=STALE))
    assert not r.fires(ev(), Transition("invalid", "INVALID", "", None, 0))


def test_fired_keeps_config_order() -> None:
    rules = [rule(Match(), rid="a"),
             rule(Match(name=Pattern.parse(["VI_2"])), rid="b"),
             rule(Match(state=Pattern.parse(["MASTER"], upper=True)), rid="c")]
    assert [r.id for r in fired(rules, ev(), tr())] == ["a", "c"]
    assert fired([], ev(), tr()) == []


def test_notice_rule_on_master_priority_end_to_end_with_the_tracker() -> None:
    r = rule(Match(state=Pattern.parse(["MASTER_PRIORITY"], upper=True)),
             on=classes_from(["notice"]))
    t = Tracker()
    first = ev("MASTER")
    assert not r.fires(first, t.observe(first))
    news = ev("MASTER_PRIORITY", prio=40)
    news.seq = 0
    assert r.fires(news, t.observe(news))


# --------------------------------------------------------------------------- via config


def _rules(body: str) -> tuple[Rule, ...]:
    return configmod.parse(body, "/t/knotify.toml").rules


def test_config_rule_with_lowercase_state_words_and_single_strings() -> None:
    [r] = _rules('[[rule]]\nid = "m"\nstate = "master"\nfrom = ["!init"]\nkind = "instance"\n'
                 'name = "VI_*"\nprio = [100, 255]\n[[rule.action]]\ntype = "log"\n')
    assert r.fires(ev(), tr())
    assert not r.fires(ev(), tr(prev=INIT))
    assert not r.fires(ev(kind="GROUP", prio=0), tr())
    assert not r.fires(ev(prio=50), tr())


def test_config_rule_with_only_a_prio_range_fires_only_inside_it() -> None:
    """(A rule whose only matcher was ``prio`` fired for every priority: the range was
    set on the match after it had decided it matched everything.)"""
    [r] = _rules('[[rule]]\nid = "p"\nprio = [200, 255]\n[[rule.action]]\ntype = "log"\n')
    assert r.fires(ev(prio=250), tr())
    assert not r.fires(ev(prio=100), tr())
    assert not r.fires(ev(prio=None), tr())


def test_config_rule_on_every_and_notice() -> None:
    [r] = _rules('[[rule]]\nid = "n"\nstate = "MASTER_RX_LOWER_PRI"\non = ["notice"]\n'
                 '[[rule.action]]\ntype = "log"\n')
    assert r.fires(ev("MASTER_RX_LOWER_PRI"), tr("MASTER", "MASTER", NOTICE))
    assert not r.fires(ev("MASTER"), tr())


def test_config_rule_name_match_is_case_sensitive() -> None:
    [r] = _rules('[[rule]]\nid = "n"\nname = "vi_1"\n[[rule.action]]\ntype = "log"\n')
    assert not r.fires(ev(name="VI_1"), tr())
    assert r.fires(ev(name="vi_1"), tr())


@pytest.mark.parametrize(("match", "kinds"), [
    (Match(), {"INSTANCE", "GROUP", "VS", "RS", "INVALID"}),  # every event but knotify's own
    (Match(name=Pattern(("VI_2",))), set()),
    (Match(kind=Pattern(("CLUSTER",))), {"CLUSTER"}),
    (Match(kind=Pattern(("*",))),
     {"INSTANCE", "GROUP", "VS", "RS", "INVALID", "CLUSTER", "PEER"}),
    (Match(prio_min=0), {"INSTANCE", "GROUP", "VS", "RS", "INVALID"}),
])
def test_which_kinds_a_match_takes(match: Match, kinds: set[str]) -> None:
    every = ["INSTANCE", "GROUP", "VS", "RS", "INVALID", "CLUSTER", "PEER"]
    assert {k for k in every if match(ev(kind=k, vs="v" if k == "RS" else ""), tr())} == kinds
    assert match.matches_all == (match == Match())


# ------------------------------------------------------------------- send_resolved


def test_the_end_of_an_incident_reaches_an_alert_rule_for_it_by_default() -> None:
    [fault, plain, quiet, cluster] = _rules("""
[receivers.chat]
urls = ["json://127.0.0.1/x"]

[[rule]]
id = "fault"
name = "VI_*"
state = "FAULT"
[[rule.action]]
type = "alert"
receivers = ["chat"]

[[rule]]
id = "no-alert"
state = "FAULT"
[[rule.action]]
type = "log"

[[rule]]
id = "quiet"
state = "FAULT"
send_resolved = false
[[rule.action]]
type = "alert"
receivers = ["chat"]

[[rule]]
id = "cluster"
kind = ["CLUSTER", "PEER"]
state = ["SPLIT_BRAIN", "PEER_SILENT"]
[[rule.action]]
type = "alert"
receivers = ["chat"]
""")
    assert (fault.send_resolved, plain.send_resolved, quiet.send_resolved) == (
        True, False, False)
    left = ev("BACKUP"), tr("BACKUP", "FAULT")
    assert fault.fires(*left) and fault.ends_only(*left)
    assert not plain.fires(*left) and not quiet.fires(*left)
    # Only for its subjects, only on a transition out of the state it names.
    assert not fault.fires(ev("BACKUP", name="other"), tr("BACKUP", "FAULT"))
    assert not fault.fires(ev("BACKUP"), tr("BACKUP", "MASTER"))
    assert not fault.fires(ev("BACKUP"), tr("BACKUP", "FAULT", cls=REPEAT))
    # What it matches itself is not an end.
    assert fault.fires(ev("FAULT"), tr("FAULT", "BACKUP"))
    assert not fault.ends_only(ev("FAULT"), tr("FAULT", "BACKUP"))
    # CLUSTER and PEER resolutions come from their condition (the tracker's "from").
    for name, state, prev, kind in (("VI_1", "SPLIT_BRAIN_RESOLVED", "SPLIT_BRAIN", "CLUSTER"),
                                    ("lb2", "PEER_BACK", "PEER_SILENT", "PEER")):
        assert cluster.fires(ev(state, kind=kind, name=name, source="cluster"), tr(state, prev))
    assert not cluster.fires(ev("MASTER_BACK", kind="CLUSTER", source="cluster"),
                             tr("MASTER_BACK", "NO_MASTER"))
    # A state that is not an incident (MASTER) does not page when it is left.
    [master] = _rules("""
[receivers.chat]
urls = ["json://127.0.0.1/x"]
[[rule]]
state = "MASTER"
[[rule.action]]
type = "alert"
receivers = ["chat"]
""")
    assert not master.fires(ev("BACKUP"), tr("BACKUP", "MASTER"))
