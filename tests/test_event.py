"""The wire form of an event: strict decoding with messages that name the field, round trips."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knotify import fastjson, keepalived
from knotify.errors import ParseError, WireError
from knotify.event import MAX_MESSAGE, Event, acked, decode_event, decode_message, encode, reply
from knotify.fifo import event_from_line
from knotify.stamp import stamp
from knotify.vocab import SCRIPT_STATES, VRRP_KINDS, VRRP_STATES
from knotify.wire import is_ack


def wire(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": 1, "id": "0123456789abcdef", "host": "kb1", "kind": "INSTANCE", "name": "VI_1",
        "state": "MASTER", "prio": 100, "vs": "", "seq": 7, "ts_ns": 1_795_568_597_827_334_895,
        "source": "hook", "form": "notify",
    }
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def rejected(data: object) -> str:
    with pytest.raises(WireError) as info:
        decode_event(data)
    return str(info.value)


# --------------------------------------------------------------------------- valid events


def test_decode_full_event() -> None:
    ev = decode_event(wire(argv=["INSTANCE", "VI_1", "MASTER", "100"], extra={"via": "x"}),
                      recv_ns=42)
    assert ev == Event(
        id="0123456789abcdef", host="kb1", kind="INSTANCE", name="VI_1", state="MASTER",
        prio=100, vs="", seq=7, ts_ns=1_795_568_597_827_334_895, source="hook", form="notify",
        argv=["INSTANCE", "VI_1", "MASTER", "100"], raw=None, error=None, recv_ns=42,
        extra={"via": "x"})
    assert ev.key == ("kb1", "INSTANCE", "VI_1", "")
    assert ev.label == "VI_1"


def test_decode_minimal_event_fills_defaults() -> None:
    before = time.time_ns()
    ev = decode_event({"v": 1, "id": "abcdefgh", "host": "h", "kind": "GROUP", "name": "G1",
                       "state": "BACKUP", "source": "send"})
    after = time.time_ns()
    assert (ev.prio, ev.vs, ev.seq, ev.form, ev.argv, ev.raw, ev.error, ev.extra) == (
        None, "", 0, "", None, None, None, {})
    # No timestamp on the wire: the router's receive time stands in.
    assert before <= ev.ts_ns <= after
    assert before <= ev.recv_ns <= after


def test_decode_rs_event_has_vs_and_label() -> None:
    ev = decode_event(wire(kind="RS", name="[10.0.0.5]:tcp:80", vs="FWM 5", state="DOWN",
                           prio=None))
    assert ev.key == ("kb1", "RS", "[10.0.0.5]:tcp:80", "FWM 5")
    assert ev.label == "[10.0.0.5]:tcp:80 in FWM 5"


@pytest.mark.parametrize(("kind", "state"), [
    ("INSTANCE", s) for s in VRRP_STATES
] + [("GROUP", s) for s in (*SCRIPT_STATES, "{UNKNOWN}")]
  + [("VS", "UP"), ("VS", "DOWN")])
def test_every_valid_kind_state_pair_is_accepted(kind: str, state: str) -> None:
    assert decode_event(wire(kind=kind, state=state)).state == state


@pytest.mark.parametrize("source", ["hook", "fifo", "send", "spool", "cluster", "agent"])
def test_every_source_is_accepted(source: str) -> None:
    assert decode_event(wire(source=source)).source == source


def test_invalid_event_needs_no_name_and_keeps_its_error() -> None:
    ev = decode_event(wire(kind="INVALID", state="INVALID", name="", prio=None,
                           error="master hook: missing the instance name", argv=["master"]))
    assert (ev.kind, ev.state, ev.error, ev.argv) == (
        "INVALID", "INVALID", "master hook: missing the instance name", ["master"])


def test_long_error_is_truncated_not_refused() -> None:
    ev = decode_event(wire(kind="INVALID", state="INVALID", error="e" * 5000))
    assert ev.error == "e" * 2000


@pytest.mark.parametrize("prio", [0, 1, 255, None])
def test_prio_bounds_accepted(prio: int | None) -> None:
    assert decode_event(wire(prio=prio)).prio == prio


def test_surrogate_escapes_in_name_host_and_vs_become_backslash_escapes() -> None:
    bad = os.fsdecode(b"VI_\xff")
    ev = decode_event(wire(kind="RS", name=bad, vs=bad, host=os.fsdecode(b"h\xfe"),
                           state="UP", prio=None))
    assert (ev.name, ev.vs, ev.host) == ("VI_\\xff", "VI_\\xff", "h\\xfe")


def test_hostile_name_is_kept_verbatim() -> None:
    name = "VI_1; rm -rf / `id` $(id) 'q' \"d\"\nnext"
    assert decode_event(wire(name=name)).name == name


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("data", [None, [], "event", 5, True])
def test_non_object_is_refused(data: object) -> None:
    assert "event must be a JSON object" in rejected(data)


def test_unknown_fields_are_named() -> None:
    message = rejected(wire(colour="red", mood="grumpy"))
    assert message == "event has unknown field(s): 'colour', 'mood'"


@pytest.mark.parametrize("field", ["v", "id", "host", "kind", "name", "state", "source"])
def test_missing_required_field_is_named(field: str) -> None:
    assert rejected(wire(**{field: ...})) == f"event is missing the field {field!r}"


@pytest.mark.parametrize(("field", "value", "type_name"), [
    ("v", "1", "str"), ("v", 1.0, "float"), ("v", True, "bool"),
    ("id", 12345678, "int"), ("host", None, "NoneType"), ("kind", ["INSTANCE"], "list"),
    ("name", 1, "int"), ("state", {}, "dict"), ("prio", "100", "str"), ("prio", 100.0, "float"),
    ("prio", True, "bool"), ("vs", None, "NoneType"), ("seq", "7", "str"), ("seq", False, "bool"),
    ("ts_ns", 1.5, "float"), ("source", None, "NoneType"), ("form", 3, "int"),
    ("argv", "INSTANCE VI_1", "str"), ("raw", 1, "int"),
    ("error", [], "list"), ("extra", [], "list"),
])
def test_wrong_type_is_named(field: str, value: object, type_name: str) -> None:
    assert rejected(wire(**{field: value})) == (
        f"event field {field!r} has the wrong type ({type_name})")


@pytest.mark.parametrize("version", [0, 2, -1, 10**6])
def test_unsupported_version(version: int) -> None:
    assert rejected(wire(v=version)) == (
        f"event version {version!r} is not supported (this router speaks 1)")


@pytest.mark.parametrize("ident", ["", "short", "a" * 65, "has space1", "slash/123",
                                   "dot.dot.dot", "\u00e9" * 10, "semi;colon"])
def test_bad_id(ident: str) -> None:
    assert "must be 8..64 letters, digits, '-' or '_'" in rejected(wire(id=ident))


@pytest.mark.parametrize("ident", ["a" * 8, "A-b_9" * 4, "x" * 64])
def test_good_ids(ident: str) -> None:
    assert decode_event(wire(id=ident)).id == ident


@pytest.mark.parametrize("host", ["", "h" * 256, "a\nb", "a\rb", "a\0b"])
def test_bad_host(host: str) -> None:
    assert rejected(wire(host=host)) == ("event host must be 1..255 characters without "
                                         "newlines or NUL")


def test_bad_source() -> None:
    assert "event source 'keepalived' is not one of hook, fifo" in rejected(
        wire(source="keepalived"))


@pytest.mark.parametrize("kind", ["CLUSTER", "PEER", "instance", "VIP", ""])
def test_bad_kind_incl_synthetic_kinds(kind: str) -> None:
    assert f"event kind {kind!r} is not one of INSTANCE, GROUP, VS, RS" in rejected(
        wire(kind=kind))


@pytest.mark.parametrize(("kind", "state"), [
    ("INSTANCE", "UP"), ("INSTANCE", "master"), ("INSTANCE", "INVALID"), ("INSTANCE", "INIT"),
    ("GROUP", "MASTER_PRIORITY"), ("GROUP", "BACKUP_PRIORITY"), ("GROUP", "MASTER_RX_LOWER_PRI"),
    ("VS", "MASTER"), ("RS", "BACKUP"), ("VS", "up"),
])
def test_state_not_valid_for_kind(kind: str, state: str) -> None:
    vs = "[1.1.1.1]:tcp:80" if kind == "RS" else ""
    assert rejected(wire(kind=kind, state=state, vs=vs)) == (
        f"event state {state!r} is not a {kind} state")


def test_invalid_kind_needs_invalid_state() -> None:
    assert rejected(wire(kind="INVALID", state="MASTER")) == (
        "an INVALID event must have state INVALID")


def test_empty_name() -> None:
    assert rejected(wire(name="")) == "event name is empty"


def test_rs_without_vs_and_vs_on_other_kinds() -> None:
    wanted = "an RS event needs its virtual server in 'vs'; other kinds have none"
    assert rejected(wire(kind="RS", state="UP", vs="")) == wanted
    assert rejected(wire(kind="RS", state="UP", vs=...)) == wanted
    assert rejected(wire(kind="VS", state="UP", vs="FWM 5")) == wanted
    assert rejected(wire(vs="[1.1.1.1]:tcp:80")) == wanted


def test_oversize_name_and_vs() -> None:
    wanted = "event name or vs is longer than 512 characters"
    assert rejected(wire(name="n" * 513)) == wanted
    assert rejected(wire(kind="RS", state="UP", name="r", vs="v" * 513)) == wanted
    assert decode_event(wire(name="n" * 512)).name == "n" * 512


@pytest.mark.parametrize("prio", [-1, 256, 10**9])
def test_prio_out_of_range(prio: int) -> None:
    assert rejected(wire(prio=prio)) == f"event prio {prio} is outside 0..255"


@pytest.mark.parametrize(("field", "value"), [("seq", -1), ("ts_ns", -5), ("seq", 2**63),
                                              ("ts_ns", 2**64)])
def test_seq_and_ts_range(field: str, value: int) -> None:
    assert rejected(wire(**{field: value})) == "event seq and ts_ns must be in 0..2^63"


@pytest.mark.parametrize("argv", [["w"] * 257, ["x" * 4097], ["ok", 3], [None]])
def test_argv_limits(argv: list[Any]) -> None:
    assert rejected(wire(argv=argv)) == (
        "event argv must be at most 256 strings of at most 4096 characters")


def test_argv_at_its_limits_is_accepted() -> None:
    assert len(decode_event(wire(argv=["x" * 4096] * 256)).argv or []) == 256


def test_raw_and_form_limits() -> None:
    assert rejected(wire(raw="r" * 4097)) == "event raw line is longer than 4096 characters"
    assert rejected(wire(form="f" * 33)) == "event form is longer than 32 characters"
    assert decode_event(wire(raw="r" * 4096, form="f" * 32)).form == "f" * 32


def test_huge_bad_values_are_quoted_short() -> None:
    assert len(rejected(wire(kind="K" * 100_000))) < 200
    assert len(rejected(wire(state="S" * 100_000))) < 200
    assert len(rejected(wire(id="i" * 100_000))) < 200


# --------------------------------------------------------------------------- messages


def test_decode_message_ok() -> None:
    payload = json.dumps({"v": 1, "op": "event", "event": wire()}).encode()
    assert decode_message(payload) == {"v": 1, "op": "event", "event": wire()}


def test_message_over_limit_names_sizes() -> None:
    payload = json.dumps({"v": 1, "op": "ping", "pad": "x" * 5000}).encode()
    with pytest.raises(WireError) as info:
        decode_message(payload, limit=4096)
    assert str(info.value) == f"message of {len(payload)} bytes is over the 4096-byte limit"
    assert decode_message(payload, limit=len(payload))["op"] == "ping"


def test_default_message_limit() -> None:
    payload = b'{"v":1,"op":"ping","pad":"' + b"x" * MAX_MESSAGE + b'"}'
    with pytest.raises(WireError, match="over the 262144-byte limit"):
        decode_message(payload)


@pytest.mark.parametrize("payload", [b"", b"{", b"not json", b"\xff\xfe{}", b"{'v': 1}",
                                     b'{"v":1,"op":"ping"} trailing'])
def test_message_not_json(payload: bytes) -> None:
    with pytest.raises(WireError, match=r"^message is not JSON: "):
        decode_message(payload)


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"v"', b"null"])
def test_message_not_an_object(payload: bytes) -> None:
    with pytest.raises(WireError, match=r"^message must be a JSON object$"):
        decode_message(payload)


@pytest.mark.parametrize("payload", [b'{"op":"ping"}', b'{"v":2,"op":"ping"}',
                                     b'{"v":"1","op":"ping"}'])
def test_message_version(payload: bytes) -> None:
    with pytest.raises(WireError, match=r"^message version .* is not supported"):
        decode_message(payload)


@pytest.mark.parametrize("payload", [b'{"v":1}', b'{"v":1,"op":5}', b'{"v":1,"op":null}'])
def test_message_without_op(payload: bytes) -> None:
    with pytest.raises(WireError, match=r"^message has no 'op'$"):
        decode_message(payload)


def test_the_routers_ack_is_what_clients_match_and_nothing_else_is() -> None:
    # Clients match the ack without a JSON parser (knotify.wire): the one-event fast
    # form and the general reply must be the same bytes.
    ident = "0123456789abcdef"
    assert acked(ident) == reply(True, id=ident)
    assert is_ack(acked(ident), ident)
    assert not is_ack(acked(ident), ident[:-1])
    assert not is_ack(acked(ident + "0"), ident)
    assert not is_ack(reply(False, error="no", id=ident), ident)
    assert not is_ack(reply(True, ids=[ident], rejected=[]), ident)
    assert not is_ack(b"", ident)
    # Compact UTF-8 JSON; an undecodable argv byte (a lone surrogate) still round-trips.
    assert encode({"name": "\u00e9\n"}) == '{"name":"\u00e9\\n"}'.encode()
    assert json.loads(encode({"argv": ["a\udcff"]})) == {"argv": ["a\udcff"]}


# --------------------------------------------------------------------------- round trips


def test_round_trip_to_wire_decode_event() -> None:
    ev = Event(id="e" * 32, host="kb1", kind="RS", name="[fd00::5]:udp:53", state="DOWN",
               prio=None, vs="[dns]:53", seq=12, ts_ns=123456789, source="fifo", form="fifo",
               argv=None, raw='RS [fd00::5]:udp:53 [dns]:53 DOWN', error=None, recv_ns=99,
               extra={"via": "spool", "n": [1, 2]})
    back = decode_event(json.loads(json.dumps(ev.to_wire())), recv_ns=99)
    assert back == ev


def test_round_trip_through_the_hook_json_encoder() -> None:
    ev = Event(id="f" * 32, host="h", kind="INSTANCE", name="a'b\"c\n$(id)", state="MASTER",
               prio=255, seq=1, ts_ns=5, source="hook", form="notify",
               argv=["x", os.fsdecode(b"\xff")], error=None, recv_ns=1)
    back = decode_event(json.loads(fastjson.dumps(ev.to_wire())), recv_ns=1)
    assert back == ev


def test_to_wire_leaves_out_unset_optional_fields() -> None:
    data = Event(id="g" * 8, host="h", kind="GROUP", name="G1", state="STOP").to_wire()
    assert set(data) == {"v", "id", "host", "kind", "name", "state", "prio", "vs", "seq",
                         "ts_ns", "source", "form"}


def _stamped(fields: dict[str, object], source: str) -> dict[str, object]:
    return stamp(fields, source, "kb1", 0)


# A word of argv: text without lone surrogates (those are covered in test_fuzz.py) and
# without NUL (a real argv cannot hold one; refused: test_a_nul_in_a_name_is_refused).
_word = st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                min_size=1, max_size=30)
_names = _word.filter(lambda w: w.lower() not in ("instance", "group"))
_generic = st.builds(
    lambda user, kind, name, state, prio: (
        [*user, kind, name, state, str(prio)],
        {"kind": kind, "name": name, "state": state, "prio": prio, "vs": ""}),
    st.lists(_word, max_size=3), st.sampled_from(VRRP_KINDS), _word,
    st.sampled_from([*SCRIPT_STATES, "{UNKNOWN}"]), st.integers(0, 255))
_short_vrrp = st.builds(
    lambda prefix, verb_state, name: (
        [*prefix, verb_state[0], name],
        {"kind": (prefix or ["INSTANCE"])[0].upper(), "name": name, "state": verb_state[1],
         "prio": None, "vs": ""}),
    st.sampled_from([[], ["instance"], ["INSTANCE"]]),
    st.sampled_from([("master", "MASTER"), ("BACKUP", "BACKUP"), ("fault", "FAULT"),
                     ("stop", "STOP"), ("deleted", "DELETED"),
                     ("rx-lower-pri", "MASTER_RX_LOWER_PRI")]),
    _names) | st.builds(
    lambda verb_state, name: (
        ["group", verb_state[0], name],
        {"kind": "GROUP", "name": name, "state": verb_state[1], "prio": None, "vs": ""}),
    st.sampled_from([("master", "MASTER"), ("backup", "BACKUP"), ("fault", "FAULT"),
                     ("stop", "STOP")]), _names)
_short_lvs = st.builds(
    lambda verb, rs, vs: (
        [verb, rs, vs],
        {"kind": "RS", "name": rs, "state": verb[3:].upper(), "prio": None, "vs": vs}),
    st.sampled_from(["rs-up", "rs-down"]), _word, _word) | st.builds(
    lambda verb, vs: ([verb, vs], {"kind": "VS", "name": vs, "state": verb.split("-")[1].upper(),
                                   "prio": None, "vs": ""}),
    st.sampled_from(["vs-up", "vs-down", "quorum-up", "quorum-down"]), _word)
_forms = _generic | _short_vrrp | _short_lvs


def _decoded(fields: dict[str, object], words: list[str]) -> Event:
    fields["argv"] = words
    event = _stamped(fields, "hook")
    return decode_event(json.loads(fastjson.dumps(event)))


@given(_forms)
def test_property_every_keepalived_argv_form_is_parsed_and_accepted_by_the_router(
    case: tuple[list[str], dict[str, object]]
) -> None:
    """Each form keepalived (or a user) writes is parsed into the fields it means, and
    the router's decoder accepts the hook's event with those fields (no silent spool)."""
    words, meant = case
    fields = keepalived.parse_argv(words)
    assert {k: fields[k] for k in meant} == meant
    ev = _decoded(fields, words)
    assert (ev.kind, ev.name, ev.state, ev.prio, ev.vs, ev.argv) == (
        meant["kind"], meant["name"], meant["state"], meant["prio"], meant["vs"], words)


def test_a_nul_in_a_name_is_refused() -> None:
    """Only a caller other than keepalived can put a NUL in a word (argv is C strings)."""
    for words in (["group", "master", "G\x001"], ["INSTANCE", "VI\x00", "MASTER", "100"]):
        with pytest.raises(ParseError, match="NUL"):
            keepalived.parse_argv(words)


@given(st.lists(st.text(max_size=40), max_size=8))
def test_property_every_parsed_argv_is_accepted_by_the_router(words: list[str]) -> None:
    """Arbitrary words: refused with a reason, or (rarely) parsed, and then accepted."""
    try:
        fields = keepalived.parse_argv(words)
    except ParseError as exc:
        assert str(exc)
        return
    ev = _decoded(fields, words)
    assert (ev.kind, ev.name, ev.state) == (fields["kind"], fields["name"], fields["state"])


@given(line=st.text(max_size=200))
def test_property_every_fifo_line_becomes_a_decodable_event(line: str) -> None:
    """Parsable or not, a FIFO line becomes an event the router accepts (INVALID if bad)."""
    event = event_from_line(line, "kb1", 1, time.time_ns())
    ev = decode_event(json.loads(json.dumps(event)))
    assert ev.kind == "INVALID" or ev.kind in ("INSTANCE", "GROUP", "VS", "RS")


@given(kind=st.sampled_from(["INSTANCE", "GROUP", "VS", "RS", "instance", "group", "vs"]),
       name=st.text(min_size=1, max_size=50),
       state=st.sampled_from([*VRRP_STATES, "UP", "DOWN", "up", "master"]),
       prio=st.one_of(st.none(), st.integers(0, 300).map(str)))
def test_property_every_manual_event_is_accepted_by_the_router(
    kind: str, name: str, state: str, prio: str | None
) -> None:
    try:
        fields = keepalived.build_manual(kind, name, state, prio)
    except ParseError:
        return
    event = _stamped(fields, "send")
    decode_event(json.loads(fastjson.dumps(event)))


def test_a_shape_seen_before_still_has_its_values_checked() -> None:
    # The router remembers field/type shapes that passed; values are checked every time.
    assert decode_event(wire(argv=["INSTANCE", "VI_1", "MASTER", "100"])).prio == 100
    for field, value, says in [("prio", 256, "prio 256 is outside"),
                               ("id", "short", "event id 'short'"),
                               ("source", "mail", "source 'mail'"),
                               ("kind", "NOPE", "kind 'NOPE'"),
                               ("host", "a\nb", "host must be"),
                               ("argv", ["x" * 4097], "argv must be")]:
        assert says in rejected(wire(**{"argv": ["a"], field: value})), field
    # Same names, other types: a bool is not a number, a float not a prio, an int not a word.
    assert "'prio' has the wrong type (bool)" in rejected(wire(prio=True))
    assert "'prio' has the wrong type (float)" in rejected(wire(prio=100.0))
    assert "argv must be at most 256 strings" in rejected(wire(argv=["a", 1]))
    assert "argv must be at most 256 strings" in rejected(wire(argv=["a"] * 257))
    assert decode_event(wire(argv=["y" * 4096, "z" * 4096])).argv == ["y" * 4096, "z" * 4096]
    assert decode_event(wire(id="-" * 8)).id == "-" * 8
    assert "event id" in rejected(wire(id="é" * 8))


@given(st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True))
def test_acked_is_the_reply_for_any_accepted_id(ident: str) -> None:
    assert decode_event(wire(id=ident)).id == ident
    assert acked(ident) == reply(True, id=ident)
