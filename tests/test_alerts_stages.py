"""The alert pipeline's pure stages, alone, with plain values in and out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knotify.alerts import attempt, flap, grouping, render, repeat
from knotify.alerts.redact import scheme, scrub, secret_tokens, short_url, url_id
from knotify.alerts.silence import Silence, first_match, parse_matcher, parse_matchers
from knotify.alerts.stream import Stream
from knotify.errors import SilenceError, TemplateError
from knotify.event import Event
from knotify.store.db import Database
from knotify.store.events import EventStore
from knotify.store.outbox import backoff
from knotify.tracker import Tracker
from knotify.vocab import FAILED, INTERRUPTED, OK, TIMEOUT

S = 1_000_000_000


def fields(name: str = "VI_1", state: str = "MASTER", prev: str = "BACKUP", host: str = "n1",
           kind: str = "INSTANCE", cls: str = "transition", prio: str = "100",
           duration: str = "3m04s", ident: str = "ev1") -> dict[str, str]:
    return {"id": ident, "host": host, "kind": kind, "name": name, "subject": name,
            "state": state, "reported": state, "prev_state": prev, "prio": prio,
            "class": cls, "duration": duration, "time": "12:00:01",
            "when": "2025-03-14T12:00:01+01:00", "rule": "r"}


# -- render ---------------------------------------------------------------------------------


def test_single_event_reads_well_as_chat_and_mail() -> None:
    out = render.compose([render.Item("firing", fields())], render.Templates())
    assert out.title == "[n1] VI_1 BACKUP -> MASTER"
    assert out.body == ("2025-03-14T12:00:01+01:00 n1 INSTANCE VI_1: BACKUP -> MASTER "
                        "(prio 100, after 3m04s in BACKUP)\n\nknotify event ev1")
    assert out.notify_type == "success"


def test_a_group_lists_every_event_and_names_them_in_the_title() -> None:
    items = [render.Item("firing", fields("G1", kind="GROUP", prio="", ident="e1")),
             render.Item("firing", fields("VI_1", ident="e2")),
             render.Item("firing", fields("VI_2", ident="e3"))]
    out = render.compose(items, render.Templates())
    assert out.title == "[n1] G1, VI_1, VI_2 -> MASTER"
    lines = out.body.splitlines()
    when = "2025-03-14T12:00:01+01:00"
    assert lines[0] == f"{when} n1 GROUP G1: BACKUP -> MASTER (after 3m04s in BACKUP)"
    assert lines[1].startswith(f"{when} n1 INSTANCE VI_1: BACKUP -> MASTER (prio 100")
    assert lines[-1] == "knotify events: e1, e2, e3"


def test_mixed_groups_count_changes_and_take_the_most_serious_type() -> None:
    items = [render.Item("firing", fields("VI_1", state="FAULT", prev="MASTER")),
             render.Item("firing", fields("VI_2", ident="e2"))]
    out = render.compose(items, render.Templates())
    assert out.title == "[n1] 2 changes: VI_1 MASTER -> FAULT, VI_2 BACKUP -> MASTER"
    assert out.notify_type == "failure"


def test_long_groups_are_cut_in_the_title_not_in_the_body() -> None:
    items = [render.Item("firing", fields(f"VI_{i}", ident=f"e{i}")) for i in range(10)]
    out = render.compose(items, render.Templates())
    assert out.title.endswith("VI_5 +4 more -> MASTER")
    assert len(out.body.splitlines()) == 12


def test_custom_templates_see_event_and_alert_fields() -> None:
    t = render.Templates(title="{alert}/{count} {hosts}", body="{headline}|{lines}",
                         line="{name}={state}")
    out = render.compose([render.Item("firing", fields()), render.Item("firing", fields("B"))],
                         t, "chat")
    assert out.title == "firing/2 n1"
    assert out.body == "VI_1, B -> MASTER|VI_1=MASTER\nB=MASTER"


def cluster_fields(state: str, prev: str, detail: str, involved: str,
                   kind: str = "CLUSTER", name: str = "VI_1") -> dict[str, str]:
    return {**fields(name, state, prev, host="central", kind=kind, prio="", duration="5.0s"),
            "detail": detail, "involved": involved}


def test_cluster_pages_name_the_hosts_and_say_what_knotify_saw() -> None:
    split = cluster_fields("SPLIT_BRAIN", "OK", "VI_1: lb1, lb2 are all MASTER for 5.0s "
                           "(lb3 BACKUP)", "lb1, lb2")
    out = render.compose([render.Item("firing", split)], render.Templates())
    # Raised from no condition: no "OK ->" (nor "INIT ->"), and the MASTERs in the title.
    assert out.title == "[lb1, lb2] VI_1 SPLIT_BRAIN"
    assert out.body.splitlines()[0] == ("2025-03-14T12:00:01+01:00 central CLUSTER VI_1: "
                                        "SPLIT_BRAIN: lb1, lb2 are all MASTER for 5.0s "
                                        "(lb3 BACKUP)")
    over = cluster_fields("SPLIT_BRAIN_RESOLVED", "SPLIT_BRAIN", "VI_1: split brain over "
                          "after 9.0s: lb1 is the only MASTER", "lb1, lb2, lb3")
    out = render.compose([render.Item("firing", over)], render.Templates())
    assert out.title == "[lb1, lb2, lb3] VI_1 SPLIT_BRAIN -> SPLIT_BRAIN_RESOLVED"
    assert "SPLIT_BRAIN -> SPLIT_BRAIN_RESOLVED: split brain over after 9.0s" in out.body
    silent = cluster_fields("PEER_SILENT", "OK", "lb2: not heard from since "
                            "2025-03-14T11:59:58+01:00 (3.0s)", "lb2", kind="PEER", name="lb2")
    out = render.compose([render.Item("firing", silent)], render.Templates())
    assert out.title == "[lb2] lb2 PEER_SILENT"
    assert "PEER_SILENT: not heard from since 2025-03-14T11:59:58+01:00 (3.0s)" in out.body
    # An item queued by an older knotify (no "when") still gets a dated time.
    old = {k: v for k, v in fields().items() if k != "when"} | {"ts_ns": str(1_800_000_000 * S)}
    out = render.compose([render.Item("firing", old)], render.Templates())
    assert out.body.startswith("2027-01-15T"), out.body


def test_unknown_alert_template_field_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"unknown field \{nope\}"):
        render.template("{nope}")
    render.template("{headline} {lines} {count} {receiver} {footer} {change}")


@pytest.mark.parametrize(("alert", "kw", "expected"), [
    ("repeat", {"since": "4h00m"}, "still FAULT (for 4h00m)"),
    ("flapping", {"count": 6, "window": "2m00s", "stable": "5m00s"},
     "flapping: 6 changes in 2m00s, now FAULT; alerts paused until it is stable for 5m00s"),
    ("stable", {"count": 3, "stable": "5m00s"}, "stable again: FAULT for 5m00s "
     "(3 changes not alerted)"),
])
def test_change_texts(alert: str, kw: dict[str, object], expected: str) -> None:
    assert render.change_text(alert, fields(state="FAULT"), **kw) == expected  # type: ignore[arg-type]


def test_non_transition_changes() -> None:
    assert render.change_text("firing", fields(cls="repeat")) == \
        "MASTER (reported again) (prio 100, after 3m04s in BACKUP)"
    notice = {**fields(cls="notice"), "reported": "MASTER_PRIORITY"}
    assert render.change_text("firing", notice) == "MASTER_PRIORITY (now MASTER)"


@given(st.lists(st.sampled_from(["MASTER", "BACKUP", "FAULT", "STOP", "UP", "DOWN"]),
                min_size=1, max_size=8),
       st.sampled_from(render.ALERT_KINDS))
def test_compose_never_fails_and_title_is_one_line(states: list[str], alert: str) -> None:
    items = [render.Item(alert, fields(f"N{i}", state=s, ident=f"e{i}"))
             for i, s in enumerate(states)]
    out = render.compose(items, render.Templates())
    assert "\n" not in out.title and len(out.title) <= render.MAX_TITLE
    assert out.notify_type in ("info", "success", "warning", "failure")


# -- grouping -------------------------------------------------------------------------------


def test_groups_fall_due_with_their_oldest_item_and_take_everything_waiting() -> None:
    k1 = grouping.group_key("chat", {"host": "a"}, ["host"])
    k2 = grouping.group_key("chat", {"host": "b"}, ["host"])
    assert k1 != k2 and k1 != grouping.group_key("mail", {"host": "a"}, ["host"])
    waiting = [grouping.Waiting(1, k1, 10 * S), grouping.Waiting(2, k2, 11 * S),
               grouping.Waiting(3, k1, 12 * S)]
    assert grouping.due_groups(waiting, 9 * S) == []
    assert grouping.next_due(waiting) == 10 * S
    assert grouping.due_groups(waiting, 10 * S) == [[1, 3]]
    assert grouping.due_groups(waiting, 11 * S) == [[1, 3], [2]]


def test_group_by_nothing_is_one_group_per_receiver() -> None:
    a = grouping.group_key("chat", {"host": "a"}, [])
    b = grouping.group_key("chat", {"host": "b"}, [])
    assert a == b


# -- flap -----------------------------------------------------------------------------------


def test_flap_starts_above_threshold_suppresses_then_ends() -> None:
    policy = flap.FlapPolicy(threshold=3, window_s=60, stable_s=5)
    s = Stream()
    assert flap.on_event(s, True, 3, policy) == flap.NONE
    assert flap.on_event(s, False, 9, policy) == flap.NONE
    assert flap.on_event(s, True, 4, policy) == flap.START
    flap.start(s, 100 * S)
    assert flap.on_event(s, True, 1, policy) == flap.SUPPRESS
    assert flap.on_event(s, False, 0, policy) == flap.SUPPRESS
    s.suppressed = 2
    assert flap.stable_due(s, 103 * S, 104 * S, policy) == 108 * S
    assert flap.end(s) == 2
    assert not s.flapping and flap.stable_due(s, 0, 0, policy) is None


def test_flap_control_off() -> None:
    assert flap.on_event(Stream(), True, 10_000, flap.FlapPolicy(threshold=0)) == flap.NONE


def test_flap_counts_the_keys_transitions_in_the_window_up_to_the_event(tmp_path: Path) -> None:
    """What flap control is given: this key's transitions in the window ending with the
    event (a real journal; repeats, notices, other keys and older changes do not count)."""
    journal = EventStore(Database(str(tmp_path / "journal.db")))
    tracker = Tracker()
    made: list[Event] = []

    def report(state: str, at_s: int, name: str = "VI_1") -> Event:
        ev = Event(id=f"ev{len(made):014d}", host="n1", kind="INSTANCE", name=name,
                   state=state, prio=100, seq=len(made) + 1, ts_ns=at_s * S, recv_ns=at_s * S)
        journal.add_event(ev, tracker.observe(ev))
        made.append(ev)
        return ev

    for at, state in enumerate(["BACKUP", "MASTER", "BACKUP"]):  # long ago
        report(state, at)
    master = report("MASTER", 1000)
    report("MASTER", 1001)  # a repeat
    report("MASTER_PRIORITY", 1002)  # a notice
    report("BACKUP", 1002, name="VI_2")  # another key
    report("MASTER", 1003, name="VI_2")
    last = report("BACKUP", 1004)
    report("MASTER", 1005)  # after the event asked about
    window = (1004 - 60) * S
    assert journal.transitions_in_window(last.id, window) == 2  # MASTER at 1000, BACKUP at 1004
    assert journal.transitions_in_window(master.id, window) == 1
    assert journal.transitions_in_window(last.id, -1) == 5  # with the three long ago
    assert journal.transitions_in_window("no-such-event", window) == 0
    journal.database.close()


# -- repeat ---------------------------------------------------------------------------------


def test_repeat_suppresses_what_was_said_and_repeats_bad_states_after_the_interval() -> None:
    policy = repeat.RepeatPolicy(interval_s=10, states=frozenset({"FAULT"}))
    s = Stream()
    assert repeat.on_event(s, "FAULT", 3, 0, policy) == repeat.FIRE
    repeat.queued(s, "FAULT", 3, 100 * S)
    assert repeat.on_event(s, "FAULT", 3, 105 * S, policy) == repeat.SUPPRESS
    assert repeat.on_event(s, "FAULT", 3, 110 * S, policy) == repeat.REPEAT
    assert repeat.on_event(s, "FAULT", 4, 101 * S, policy) == repeat.FIRE
    assert repeat.due(s, "FAULT", 3, policy) == 110 * S
    assert repeat.due(s, "BACKUP", 4, policy) is None
    assert repeat.due(s, "FAULT", 5, policy) is None


def test_good_states_and_zero_interval_never_repeat() -> None:
    s = Stream()
    repeat.queued(s, "MASTER", 1, 0)
    assert repeat.due(s, "MASTER", 1, repeat.RepeatPolicy(10)) is None
    assert repeat.on_event(s, "MASTER", 1, 99 * S, repeat.RepeatPolicy(10)) == repeat.SUPPRESS
    repeat.queued(s, "FAULT", 2, 0)
    assert repeat.due(s, "FAULT", 2, repeat.RepeatPolicy(0)) is None
    s.flapping = True
    assert repeat.due(s, "FAULT", 2, repeat.RepeatPolicy(10)) is None


# -- silences -------------------------------------------------------------------------------


def silence(*matchers: str, start: int = 0, end: int = 100 * S) -> Silence:
    return Silence(1, parse_matchers(list(matchers)), start, end, 0, "me", "why")


def test_matchers_glob_negate_alternatives_and_case() -> None:
    s = silence("name=VI_1", "host=node*", "state!=BACKUP", "kind=instance")
    assert s.matches(fields(host="node7"))
    assert not s.matches(fields(host="db1"))
    assert not s.matches(fields(state="BACKUP"))
    assert not s.matches(fields(name="VI_2"))
    assert silence("state=fault,stop").matches(fields(state="STOP"))
    rs = {**fields(), "subject": "[10.0.0.5]:tcp:80 in [10.0.0.100]:tcp:80"}
    assert silence("subject=[10.0.0.5]*").matches(rs)


def test_receiver_matchers_never_match_without_a_receiver() -> None:
    s = silence("receiver=mail")
    assert s.matches({**fields(), "receiver": "mail"})
    assert not s.matches(fields())


def test_only_active_silences_match() -> None:
    s = silence("host=*", start=10 * S, end=20 * S)
    assert first_match([s], fields(), 5 * S) is None
    assert first_match([s], fields(), 10 * S) is s
    assert first_match([s], fields(), 20 * S) is None
    assert s.status(5 * S) == "pending" and s.status(15 * S) == "active"
    s.expired_ns = 12 * S
    assert first_match([s], fields(), 15 * S) is None and s.status(15 * S) == "expired"


@pytest.mark.parametrize(("text", "message"), [
    ("VI_1", "must be FIELD=VALUE"), ("colour=red", "unknown field 'colour'"),
    ("name=", "has no value"), ("name=!x", "write name!=VALUE"),
])
def test_bad_matchers_say_why(text: str, message: str) -> None:
    with pytest.raises(SilenceError, match=message):
        parse_matcher(text)


def test_a_silence_needs_a_matcher() -> None:
    with pytest.raises(SilenceError, match="at least one matcher"):
        parse_matchers([])


# -- redaction ------------------------------------------------------------------------------


def test_secrets_are_what_apprise_masks_plus_passwords_and_long_query_values() -> None:
    raw = "json://ops:Pw-s3cret@hook.example:8080/path?:token=abcdefghijkl&method=POST"
    privacy = "json://ops:****@hook.example:8080/path?method=POST&:token=abcdefghijkl"
    secrets = secret_tokens(raw, privacy)
    assert "Pw-s3cret" in secrets and "abcdefghijkl" in secrets
    assert "hook.example" not in secrets and "POST" not in secrets
    text = f"failed {raw}: 401 for ops:Pw-s3cret"
    assert "Pw-s3cret" not in scrub(text, secrets) and "abcdefghijkl" not in scrub(text, secrets)
    assert short_url(privacy) == "json://ops:****@hook.example:8080/path"


def test_tokens_apprise_shortens_are_secret() -> None:
    raw = "tgram://123456789:ABCDEFGhijklmnop_qrstuv/12345"
    privacy = "tgram://1...v/12345/?image=False"
    assert "ABCDEFGhijklmnop_qrstuv" in secret_tokens(raw, privacy)


def test_a_url_apprise_refused_is_secret_from_end_to_end() -> None:
    secrets = secret_tokens("tgram://sekretTOKEN/x")
    assert scrub("Unparseable Telegram URL tgram://sekretTOKEN/x", secrets) == \
        "Unparseable Telegram URL tgram://****/x"
    assert scheme("tgram://sekretTOKEN/x") == "tgram://" and scheme("no scheme") == "?://"


def test_url_ids_are_stable_and_do_not_show_the_url() -> None:
    assert url_id("mailto://u:p@h") == url_id("mailto://u:p@h") != url_id("mailto://u:q@h")
    assert "p@h" not in url_id("mailto://u:p@h")


# -- backoff and attempt verdicts -----------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [backoff(n, 5, 60) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff(10_000, 1, 30) == 30


def results(*records: Mapping[str, object]) -> attempt.Results:
    return attempt.parse_results("\n".join(json.dumps(r) for r in records) + "\n{\"t\": \"ur")


PLAN = {"t": "plan", "urls": [{"id": "a", "url": "json://a"}, {"id": "b", "url": "json://b"}],
        "problems": []}


def test_verdict_all_reached() -> None:
    res = results({"t": "start", "pid": 7}, PLAN,
                  {"t": "url", "id": "a", "url": "json://a", "ok": True, "status": "SUCCESS"},
                  {"t": "url", "id": "b", "url": "json://b", "ok": True, "status": "SUCCESS"},
                  {"t": "end"})
    assert res.pid == 7 and res.ended
    v = attempt.verdict(res, [], False)
    assert v.status == OK and v.done == ["a", "b"] and v.error == ""


def test_verdict_partial_keeps_what_was_reached_and_names_what_failed() -> None:
    res = results(PLAN, {"t": "url", "id": "a", "ok": True},
                  {"t": "url", "id": "b", "ok": False, "status": "FAILURE", "error": "500"},
                  {"t": "end"})
    v = attempt.verdict(res, [], False)
    assert v.status == FAILED and v.done == ["a"] and v.error == "json://b: 500"


def test_verdict_after_a_kill_mid_url_retries_that_url_and_skips_done_ones() -> None:
    res = results(PLAN, {"t": "send", "id": "b"})
    v = attempt.verdict(res, ["a"], True, "timed out")
    assert v.status == TIMEOUT and v.done == ["a"]
    assert [u["status"] for u in v.urls] == ["UNKNOWN"]


def test_verdict_without_a_plan() -> None:
    assert attempt.verdict(attempt.Results(), [], False, interrupted=True).status == \
        INTERRUPTED
    assert attempt.verdict(attempt.Results(), [], True).status == TIMEOUT
    v = attempt.verdict(attempt.Results(), ["x"], False, "the sender exited 1: boom")
    assert v.status == FAILED and v.error == "the sender exited 1: boom"


def test_verdict_problems_count_as_failures() -> None:
    res = results({"t": "plan", "urls": [], "problems": [{"id": "p", "url": "tgram://...",
                                                          "error": "refused"}]}, {"t": "end"})
    v = attempt.verdict(res, [], False)
    assert v.status == FAILED and v.urls[0]["status"] == "INVALID"


# -- since when an alert rule exists (flap control counts from then) ----------------------


def test_an_alert_rule_exists_from_the_load_that_brought_its_definition(tmp_path: Path) -> None:
    from knotify.actions.alert import AlertAction
    from knotify.actions.log import LogAction
    from knotify.alerts.since import RuleSince
    from knotify.rules import Match, Pattern, Rule
    from knotify.store.rule_since import RuleSinceRows
    from knotify.templates import Template

    def rule(rid: str = "page", name: str = "VI_1", receivers: tuple[str, ...] = ("chat",),
             on: frozenset[str] = frozenset({"transition"})) -> Rule:
        return Rule(rid, Match(name=Pattern.parse([name])), on,
                    (LogAction(Template("x"), "info"), AlertAction(receivers, {}, None)))

    database = Database(str(tmp_path / "j.db"))
    since = RuleSince(RuleSinceRows(database))
    assert since.since("page#1") == 0  # not known: everything counts, as before
    assert since.loaded([rule()], 10 * S) == ["page#1"]
    assert since.since("page#1") == 10 * S and since.since("page#0") == 0
    # The same rule, or only its receivers changed: it keeps existing (also across a
    # restart, which reads the journal again).
    assert since.loaded([rule(receivers=("mail",))], 20 * S) == []
    assert RuleSince(RuleSinceRows(database)).loaded([rule()], 30 * S) == []
    assert since.since("page#1") == 10 * S
    # Other matchers or classes: a new rule.
    assert since.loaded([rule(name="VI_*")], 40 * S) == ["page#1"]
    assert since.since("page#1") == 40 * S
    assert since.loaded([rule(name="VI_*", on=frozenset({"transition", "repeat"}))],
                        50 * S) == ["page#1"]
    # Gone from a loaded config, then back: new from its return.
    assert since.loaded([rule("other")], 60 * S) == ["other#1"]
    assert since.loaded([rule("other"), rule()], 70 * S) == ["page#1"]
    assert since.since("page#1") == 70 * S and since.since("other#1") == 60 * S
    database.close()
