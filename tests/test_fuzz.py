"""Fuzzing every parser a user or keepalived can reach: no crash, no hang, a clear error.

hypothesis drives the argv parser, the FIFO line parser, the wire decoder, the
template parser and the config loader with arbitrary (and hostile) input. Each
must either accept the input with well-typed fields or refuse it with its own
error type and a non-empty message; anything else is a bug.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knotify import config as configmod
from knotify import hook, keepalived
from knotify.errors import ConfigError, ParseError, TemplateError, WireError
from knotify.event import decode_event, decode_message
from knotify.templates import FIELDS, Template
from knotify.vocab import SCRIPT_STATES, UNKNOWN_STATE, VRRP_KINDS, VRRP_STATES

FUZZ = settings(max_examples=400, deadline=2000,
                suppress_health_check=[HealthCheck.too_slow])

# Text as argv can carry it: anything, including lone surrogates (undecodable bytes).
argv_text = st.lists(
    st.text(st.characters(codec="utf-8"), max_size=8)
    | st.sampled_from(["\udcff", "\udc80", ";", "|", "&", "$(id)", "`id`", "'", '"', "\n",
                       "\\", "*", "[", "]", " ", "\t", "\x00"]),
    max_size=5).map("".join)
keepalived_words = st.sampled_from(
    ["INSTANCE", "GROUP", "MASTER", "BACKUP", "FAULT", "STOP", "DELETED", "{UNKNOWN}", "0", "100",
     "255", "256", "-1", "master", "backup", "group", "instance", "rs-up", "rs-down", "vs-up",
     "vs-down", "quorum-up", "rx-lower-pri", "FWM", "[10.0.0.1]:tcp:80", "VI_1", ""])
words = st.lists(keepalived_words | argv_text, max_size=8)


def _check_fields(fields: dict[str, object]) -> None:
    assert fields["kind"] in ("INSTANCE", "GROUP", "VS", "RS")
    assert isinstance(fields["name"], str) and fields["name"]
    fields["name"].encode("utf-8")  # always valid UTF-8 after parsing
    assert isinstance(fields["state"], str)
    prio = fields["prio"]
    assert prio is None or (isinstance(prio, int) and 0 <= prio <= 255)
    assert isinstance(fields["vs"], str)


@FUZZ
@given(words)
def test_argv_parser_accepts_or_explains(argv: list[str]) -> None:
    try:
        fields = keepalived.parse_argv(argv)
    except ParseError as exc:
        assert str(exc)
        return
    _check_fields(fields)


# A name as argv carries it (never a NUL: names with one are refused), with the text the
# event must show: a byte that is not UTF-8 (a lone surrogate escape) becomes \xNN;
# everything else stays as it is.
_SHOWN = {chr(0xDCFF): "\\xff", chr(0xDC80): "\\x80"}
named_text = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\0"),
            min_size=1, max_size=8)
    | st.sampled_from([*_SHOWN, ";", "$(id)", "`id`", "'", '"', "\n", "\\", "*", "[", " "]),
    min_size=1, max_size=5).map(lambda parts: ("".join(parts),
                                               "".join(_SHOWN.get(p, p) for p in parts)))


@FUZZ
@given(st.lists(keepalived_words | argv_text, max_size=6),
       st.sampled_from(VRRP_KINDS), named_text,
       st.sampled_from(SCRIPT_STATES), st.integers(0, 255))
def test_generic_notify_is_read_from_the_end_whatever_comes_first(
    user: list[str], kind: str, name: tuple[str, str], state: str, prio: int
) -> None:
    raw, shown = name
    fields = keepalived.parse_argv([*user, kind, raw, state, str(prio)])
    assert (fields["kind"], fields["name"], fields["state"], fields["prio"]) == (
        kind, shown, state, prio)


def test_a_name_that_is_not_utf8_is_shown_with_its_bytes_escaped() -> None:
    # The same rule as named_text above, on bytes keepalived could pass (os.fsdecode).
    name = os.fsdecode(b"VI_\xff\xc3\xa9\x80")
    assert keepalived.parse_argv(["master", name])["name"] == "VI_\\xff\u00e9\\x80"


@FUZZ
@given(st.text(max_size=200) | st.builds(
    lambda k, n, s, p: f'{k} "{n}" {s} {p}', st.sampled_from(["INSTANCE", "GROUP", "VS", "RS"]),
    argv_text, st.sampled_from(VRRP_STATES + ("UP", "DOWN", "X")),
    st.integers(-5, 300)))
def test_fifo_line_parser_accepts_or_explains(line: str) -> None:
    try:
        fields = keepalived.parse_fifo_line(line)
    except ParseError as exc:
        assert str(exc)
        return
    _check_fields(fields)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)

event_like = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, "1", None]),
     "id": st.sampled_from(["a" * 32, "short", "x" * 70, "bad id!", ""]) | st.text(max_size=40),
     "host": st.text(max_size=300),
     "kind": st.sampled_from(["INSTANCE", "GROUP", "VS", "RS", "INVALID", "CLUSTER", "x"]),
     "name": argv_text,
     "state": st.sampled_from(list(VRRP_STATES) + ["UP", "DOWN", "INVALID", "?"]),
     "source": st.sampled_from(["hook", "fifo", "send", "spool", "evil"])},
    optional={"prio": json_values, "vs": argv_text, "seq": json_values, "ts_ns": json_values,
              "argv": json_values, "raw": json_values, "error": json_values,
              "form": json_values, "extra": json_values, "unexpected": json_values})


_text = st.characters(codec="utf-8")
_one_line = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"),
                    min_size=1, max_size=60)
#: Names and virtual servers: anything but a NUL (refused: exec actions could not pass it).
_name = st.characters(codec="utf-8", exclude_characters="\0")


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A wire event the router must accept: every field within its documented range."""
    kind = draw(st.sampled_from(["INSTANCE", "GROUP", "VS", "RS", "INVALID"]))
    states = {"INSTANCE": VRRP_STATES,
              "GROUP": (*SCRIPT_STATES, UNKNOWN_STATE),
              "VS": ("UP", "DOWN"), "RS": ("UP", "DOWN"), "INVALID": ("INVALID",)}[kind]
    data: dict[str, Any] = {
        "v": 1,
        "id": draw(st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True)),
        "host": draw(_one_line),
        "kind": kind,
        "name": draw(st.text(_name, min_size=0 if kind == "INVALID" else 1, max_size=60)),
        "state": draw(st.sampled_from(states)),
        "source": draw(st.sampled_from(["hook", "fifo", "send", "spool", "cluster", "agent",
                                        "resync"])),
    }
    if kind == "RS":
        data["vs"] = draw(st.text(_name, min_size=1, max_size=60))
    elif draw(st.booleans()):
        data["vs"] = ""
    optional = {
        "prio": st.none() | st.integers(0, 255),
        "seq": st.integers(0, 2**63 - 1),
        "ts_ns": st.integers(1, 2**63 - 1),
        "form": st.text(_text, max_size=32),
        "argv": st.lists(st.text(_text, max_size=50), max_size=8),
        "raw": st.text(_text, max_size=100),
        "error": st.text(_text, max_size=100),
        "extra": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "mono_ns": st.integers(0, 2**63 - 1),
        "boot": st.text(_text, max_size=64),
        "pid": st.integers(0, 2**31 - 1),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        data[key] = draw(optional[key])
    return data


#: One thing wrong with an otherwise valid event (None: leave the field out), and what
#: the refusal must say.
DAMAGE = [
    ("v", 2, "version 2 is not supported"),
    ("id", "short", "event id 'short'"),
    ("id", "bad id!", "event id 'bad id!'"),
    ("host", "", "host must be 1..255"),
    ("host", "a\nb", "host must be 1..255"),
    ("source", "evil", "source 'evil'"),
    ("kind", "CLUSTER", "kind 'CLUSTER'"),
    ("state", "SOMETIMES", "state"),
    ("prio", 256, "prio 256 is outside"),
    ("prio", True, "'prio' has the wrong type (bool)"),
    ("seq", -1, "seq and ts_ns"),
    ("form", "f" * 33, "form is longer than 32"),
    ("pid", 2**31, "pid or boot is out of range"),
    ("unexpected", 1, "unknown field(s): 'unexpected'"),
    ("host", None, "missing the field 'host'"),
    ("name", 7, "'name' has the wrong type (int)"),
]


# Three properties, so that each outcome is reached on every example rather than by
# chance: valid events are accepted, damaged ones refused, arbitrary ones either.

@FUZZ
@given(valid_events())
def test_wire_event_decoder_accepts_every_valid_event_with_its_fields(
    data: dict[str, Any]
) -> None:
    ev = decode_event(data)
    assert (ev.id, ev.host, ev.kind, ev.name, ev.state, ev.source) == (
        data["id"], data["host"], data["kind"], data["name"], data["state"], data["source"])
    assert (ev.prio, ev.vs, ev.seq, ev.argv, ev.raw, ev.form) == (
        data.get("prio"), data.get("vs", ""), data.get("seq", 0), data.get("argv"),
        data.get("raw"), data.get("form", ""))
    assert ev.ts_ns == data.get("ts_ns", ev.ts_ns)
    assert (ev.mono_ns, ev.boot, ev.pid) == (
        data.get("mono_ns", 0), data.get("boot", ""), data.get("pid", 0))


@FUZZ
@given(valid_events(), st.sampled_from(DAMAGE))
def test_wire_event_decoder_refuses_a_damaged_event_saying_what_is_wrong(
    data: dict[str, Any], damage: tuple[str, Any, str]
) -> None:
    key, value, says = damage
    data = dict(data)
    if value is None:
        del data[key]
    else:
        data[key] = value
    with pytest.raises(WireError) as info:
        decode_event(data)
    assert says in str(info.value)


@FUZZ
@given(event_like)
def test_wire_event_decoder_accepts_or_explains(data: dict[str, Any]) -> None:
    try:
        ev = decode_event(data)
    except WireError as exc:
        assert str(exc)
        return
    assert ev.kind in ("INSTANCE", "GROUP", "VS", "RS", "INVALID")
    assert ev.prio is None or 0 <= ev.prio <= 255
    ev.name.encode("utf-8")
    ev.host.encode("utf-8")


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_wire_message_decoder_accepts_or_explains(payload: bytes) -> None:
    try:
        msg = decode_message(payload)
    except WireError as exc:
        assert str(exc)
        return
    assert msg["v"] == 1 and isinstance(msg["op"], str)


@FUZZ
@given(st.text(max_size=60) | st.builds(lambda a, f, b: f"{a}{{{f}}}{b}", st.text(max_size=10),
                                         st.sampled_from([*FIELDS, "nope", "", "name.x"]),
                                         st.text(max_size=10)))
def test_template_parser_accepts_or_explains(text: str) -> None:
    try:
        template = Template(text)
    except TemplateError as exc:
        assert str(exc)
        return
    rendered = template.render({name: f"<{name}>" for name in FIELDS})
    assert isinstance(rendered, str)


# -- the config loader: random documents made of the real keys with random values ----------

def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


scalars = (st.text(max_size=12) | st.integers(-5, 100000) | st.booleans()
           | st.sampled_from(["250ms", "2s", "5m", "-1s", "soon", "MASTER", "!INIT", "*", "VI_?",
                              "/bin/true", "true", "exec", "log", "service", "relative/prog"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3), max_leaves=6)
KEYS = {
    "paths": ["runtime_dir", "state_dir", "group", "bogus"],
    "router": ["listen", "journal", "fifos", "drain_timeout", "spool_interval", "synchronous",
               "keep_events", "max_message", "insecure", "max_parallel_actions", "bogus"],
    "hook": ["ack_timeout", "spool_dir", "host", "endpoints", "bogus"],
    "log": ["format", "level", "bogus"],
    "defaults": ["exec_timeout", "service_timeout", "systemctl", "bogus"],
}
RULE_KEYS = ["id", "kind", "name", "vs", "host", "state", "from", "source", "prio", "on", "delay",
             "skip_if_superseded", "max_age", "description", "bogus"]
ACTION_KEYS = ["type", "argv", "timeout", "kill_grace", "env", "cwd", "unit", "command",
               "message", "level", "user", "bogus"]


@st.composite
def config_docs(draw: st.DrawFn) -> str:
    out = []
    for section, keys in KEYS.items():
        if draw(st.booleans()):
            out.append(f"[{section}]")
            for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
                out.append(f"{key} = {toml_value(draw(values))}")
    for _ in range(draw(st.integers(0, 2))):
        out.append("[[rule]]")
        for key in draw(st.lists(st.sampled_from(RULE_KEYS), max_size=4, unique=True)):
            out.append(f"{key} = {toml_value(draw(values))}")
        for _ in range(draw(st.integers(0, 2))):
            out.append("[[rule.action]]")
            kind = draw(st.sampled_from(["exec", "log", "service", "x"]))
            out.append(f"type = {toml_value(kind)}")
            for key in draw(st.lists(st.sampled_from(ACTION_KEYS[1:]), max_size=3, unique=True)):
                out.append(f"{key} = {toml_value(draw(values))}")
    if draw(st.booleans()):
        out.append(draw(st.text(max_size=20)))  # trailing garbage, sometimes valid
    return "\n".join(out) + "\n"


@FUZZ
@given(config_docs())
def test_config_loader_accepts_or_names_file_key_and_reason(text: str) -> None:
    try:
        config = configmod.parse(text, "/etc/knotify/fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("/etc/knotify/fuzz.toml")
        assert exc.reason
        return
    assert isinstance(config.rules, tuple)


@pytest.fixture
def hook_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KNOTIFY_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("KNOTIFY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KNOTIFY_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("KNOTIFY_ACK_TIMEOUT", "10ms")
    return tmp_path


@settings(max_examples=60, deadline=5000,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(argv=words)
def test_hook_never_raises_and_never_loses_the_call(
    hook_env: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    spool_new = hook_env / "state" / "spool" / "new"
    before = len(os.listdir(spool_new)) if spool_new.exists() else 0
    code = hook.main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2)
    assert "Traceback" not in err
    # Router down: every call, valid or not, is in the spool (malformed ones as INVALID).
    assert len(os.listdir(spool_new)) == before + 1
    if code == 2:
        assert err.startswith("knotify-notify: ") and err.count("\n") >= 1


def test_live_router_survives_a_stream_of_garbage(kenv: Any, router: Any) -> None:
    """Random and mutated messages at the real socket: each refused, the router serves on."""
    import random

    from knotify import zmtp

    kenv.write_config('[[rule]]\nid = "l"\n[[rule.action]]\ntype = "log"\n')
    router.start()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    rng = random.Random(1234)
    valid = json.dumps({"v": 1, "op": "event", "event": {
        "v": 1, "id": "a" * 32, "host": "h", "kind": "INSTANCE", "name": "VI_1",
        "state": "MASTER", "prio": 100, "seq": 1, "ts_ns": 1, "source": "hook"}}).encode()
    answered = 0
    for i in range(300):
        if i % 3 == 0:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        else:
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            payload = bytes(data)
        try:
            answer = json.loads(zmtp.request(endpoint, payload, 2))
        except OSError:
            continue
        answered += 1
        assert isinstance(answer.get("ok"), bool)
        if not answer["ok"]:
            assert answer["error"]
    assert answered > 250
    assert router.alive
    ping = json.loads(zmtp.request(endpoint, b'{"v":1,"op":"ping"}', 5))
    assert ping["ok"] is True
