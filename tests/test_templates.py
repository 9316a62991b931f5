"""``{field}`` templates: parsing, errors, escapes, and every field rendered from an event."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from knotify.errors import TemplateError
from knotify.event import Event
from knotify.templates import FIELDS, Template, event_fields
from knotify.tracker import Transition
from knotify.vocab import INIT, NOTICE, REPEAT, TRANSITION

S = 1_000_000_000


def render(text: str, **values: str) -> str:
    fields = dict.fromkeys(FIELDS, "")
    fields.update(values)
    return Template(text).render(fields)


def test_plain_text_is_kept() -> None:
    assert render("no fields here") == "no fields here"
    assert render("") == ""


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_known_field_is_accepted(name: str) -> None:
    template = Template(f"<{{{name}}}>")
    assert template.fields == {name}
    assert render(f"<{{{name}}}>", **{name: "V"}) == "<V>"


def test_fields_and_literals_interleave() -> None:
    t = Template("{kind} {subject} on {host}: {prev_state} -> {state}")
    assert t.fields == {"kind", "subject", "host", "prev_state", "state"}
    assert t.render(dict.fromkeys(FIELDS, "") | {
        "kind": "INSTANCE", "subject": "VI_1", "host": "kb1", "prev_state": "BACKUP",
        "state": "MASTER"}) == "INSTANCE VI_1 on kb1: BACKUP -> MASTER"


def test_spaces_inside_braces_are_allowed() -> None:
    assert render("{ name }", name="VI_1") == "VI_1"


def test_a_field_may_repeat() -> None:
    assert render("{name}/{name}", name="x") == "x/x"


@pytest.mark.parametrize(("text", "result"), [
    ("{{", "{"), ("}}", "}"), ("{{name}}", "{name}"), ("{{{name}}}", "{N}"),
    ("a {{literal}} b {name}", "a {literal} b N"), ("}}{{", "}{"),
    ('{{"json": "{name}"}}', '{"json": "N"}'),
])
def test_double_braces_are_literal_braces(text: str, result: str) -> None:
    assert render(text, name="N") == result


@pytest.mark.parametrize("text", ["{nme}", "{}", "{NAME}", "{name.upper}", "{name!r}",
                                  "{name:>10}", "{name[0]}", "{__class__}", "{a{name}"])
def test_unknown_field_is_named_with_the_known_ones(text: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(text)
    message = str(info.value)
    assert message.startswith("unknown field {")
    assert repr(text) in message
    assert "known: id, host, kind, name" in message


@pytest.mark.parametrize(("text", "position"), [("{", 0), ("a{name", 1), ("{{ {x", 3)])
def test_unclosed_brace_names_the_position(text: str, position: int) -> None:
    with pytest.raises(TemplateError) as info:
        Template(text)
    assert str(info.value) == f"unclosed '{{' at position {position} in {text!r}"


@pytest.mark.parametrize(("text", "position"), [("}", 0), ("x}y", 1), ("{name}}", 6)])
def test_single_closing_brace_says_to_double_it(text: str, position: int) -> None:
    with pytest.raises(TemplateError) as info:
        Template(text)
    assert str(info.value) == f"single '}}' at position {position} in {text!r} (write '}}}}')"


@pytest.mark.parametrize("value", ["{name}", "{{", "}", "$(id)", "`id`", "a'b\"c\nd",
                                   "%s %(x)s", "\\x00"])
def test_values_are_never_expanded(value: str) -> None:
    assert render("[{name}]", name=value) == f"[{value}]"


def test_repr_shows_text() -> None:
    assert repr(Template("{name}")) == "Template('{name}')"


# --------------------------------------------------------------------------- event_fields

TS = 1_795_568_597_827_334_895


def _event(**changes: object) -> Event:
    base: dict[str, object] = dict(
        id="abcdef0123456789", host="kb1", kind="RS", name="[10.0.0.5]:tcp:80",
        state="DOWN", prio=None, vs="FWM 5", seq=42, ts_ns=TS, source="fifo", form="fifo",
        extra={"detail": "kb1 and kb2 are MASTER"},
    )
    base.update(changes)
    return Event(**base)  # type: ignore[arg-type]


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the local time zone (a POSIX TZ string) for this test."""
    def use(tz: str) -> None:
        monkeypatch.setenv("TZ", tz)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


def test_event_fields_cover_every_documented_field(zone: Callable[[str], None]) -> None:
    zone("IST-5:30")  # TS is 2026-11-25 01:03:17.827334895 UTC
    fields = event_fields(_event(), Transition(TRANSITION, "DOWN", "UP", TS - 184 * S, 3),
                          rule="rs-down")
    assert set(fields) == set(FIELDS)
    assert fields == {
        "id": "abcdef0123456789",
        "host": "kb1",
        "kind": "RS",
        "name": "[10.0.0.5]:tcp:80",
        "vs": "FWM 5",
        "subject": "[10.0.0.5]:tcp:80 in FWM 5",
        "state": "DOWN",
        "reported": "DOWN",
        "prev_state": "UP",
        "from": "UP",
        "prio": "",
        "seq": "42",
        "ts": "2026-11-25T06:33:17.827+05:30",
        "ts_ns": str(TS),
        "time": "06:33:17",
        "when": "2026-11-25T06:33:17+05:30",
        "duration": "3m04s",
        "duration_s": "184.000",
        "class": "transition",
        "source": "fifo",
        "rule": "rs-down",
        "detail": "kb1 and kb2 are MASTER",
        "involved": "kb1",
    }



def test_ts_and_time_are_in_the_local_time_zone(zone: Callable[[str], None]) -> None:
    zone("UTC0")
    fields = event_fields(_event(), Transition(TRANSITION, "DOWN", "UP", None, 1))
    assert (fields["ts"], fields["time"]) == ("2026-11-25T01:03:17.827+00:00", "01:03:17")
    zone("PST8PDT,M3.2.0,M11.1.0")  # late November: standard time, UTC-8, the day before
    fields = event_fields(_event(), Transition(TRANSITION, "DOWN", "UP", None, 1))
    assert (fields["ts"], fields["time"]) == ("2026-11-24T17:03:17.827-08:00", "17:03:17")
    # The alert time: date, time and offset, so a page read elsewhere is unambiguous.
    assert fields["when"] == "2026-11-24T17:03:17-08:00"


def test_involved_names_the_hosts_of_a_cluster_condition() -> None:
    members = [{"host": h, "name": "VI_1", "state": s, "silent": False}
               for h, s in (("lb1", "MASTER"), ("lb2", "MASTER"), ("lb3", "BACKUP"))]

    def involved(state: str, **extra: object) -> str:
        ev = Event(id="c1", host="central", kind="CLUSTER", name="VI_1", state=state,
                   ts_ns=TS, source="cluster", extra={"members": members, **extra})
        return event_fields(ev, Transition(TRANSITION, state, "OK", None, 1))["involved"]

    assert involved("SPLIT_BRAIN", masters=["lb2", "lb1"], evidence=[]) == "lb1, lb2"
    assert involved("SPLIT_BRAIN", masters=[], evidence=["lb3"]) == "lb3"
    assert involved("NO_MASTER", masters=[]) == "lb1, lb2, lb3"
    assert involved("SPLIT_BRAIN_RESOLVED", masters=["lb1"]) == "lb1, lb2, lb3"
    # Hostile or missing detail: the event's own host, never a crash.
    ev = Event(id="c2", host="central", kind="CLUSTER", name="VI_1", state="NO_MASTER",
               ts_ns=TS, source="cluster", extra={"members": [1, {"host": 2}, "x"]})
    assert event_fields(ev, Transition(TRANSITION, "NO_MASTER", "OK", None, 1),
                        only={"involved"}) == {"involved": "central"}


def test_event_fields_effective_versus_reported_state_and_prio() -> None:
    ev = _event(kind="INSTANCE", name="VI_3", vs="", state="MASTER_PRIORITY", prio=40,
                extra={})
    fields = event_fields(ev, Transition(NOTICE, "MASTER", "MASTER", TS - S, 2))
    assert (fields["state"], fields["reported"], fields["prio"]) == (
        "MASTER", "MASTER_PRIORITY", "40")
    assert fields["subject"] == "VI_3" and fields["vs"] == ""
    # Only a transition has a duration.
    assert fields["duration"] == "" and fields["duration_s"] == ""
    assert fields["class"] == "notice" and fields["rule"] == "" and fields["detail"] == ""


def test_event_fields_first_sight_has_init_and_no_duration() -> None:
    ev = _event(kind="GROUP", name="G1", vs="", state="BACKUP", prio=0)
    fields = event_fields(ev, Transition(TRANSITION, "BACKUP", INIT, None, 1))
    assert (fields["prev_state"], fields["from"], fields["duration"], fields["prio"]) == (
        INIT, INIT, "", "0")


def test_event_fields_repeat_has_no_duration() -> None:
    fields = event_fields(_event(), Transition(REPEAT, "DOWN", "DOWN", TS - 10 * S, 2))
    assert fields["duration"] == "" and fields["class"] == "repeat"


def test_render_with_event_fields_every_field() -> None:
    text = " ".join(f"{name}={{{name}}}" for name in FIELDS)
    out = Template(text).render(event_fields(
        _event(), Transition(TRANSITION, "DOWN", "UP", TS - S // 2, 3), "r1"))
    assert "subject=[10.0.0.5]:tcp:80 in FWM 5 " in out
    assert "duration=500ms " in out and "duration_s=0.500 " in out
    assert "rule=r1 " in out and "detail=kb1 and kb2 are MASTER " in out
    assert out.endswith("involved=kb1")
