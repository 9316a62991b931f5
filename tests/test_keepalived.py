"""keepalived's inputs (argv and FIFO lines) to event fields: every form of the reference doc.

The contract is /work/shared/reference/keepalived-notify.md (keepalived 2.2.7): the generic
``notify`` appends ``INSTANCE|GROUP NAME STATE PRIO`` after the user's own words, specific
hooks get no arguments (the user writes a short form into the command string), and the FIFO
carries ``INSTANCE "NAME" STATE PRIO``, ``VS vs UP|DOWN`` and ``RS rs vs UP|DOWN`` lines.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from conftest import KEnv
from hypothesis import given
from hypothesis import strategies as st

from knotify import keepalived as ka
from knotify.errors import ParseError
from knotify.keepalived import build_manual, parse_argv, parse_fifo_line, safe_text
from knotify.vocab import SCRIPT_STATES, VRRP_KINDS, VRRP_STATES


def fields(kind: str, name: str, state: str, prio: int | None, vs: str = "",
           form: str = "") -> dict[str, object]:
    return {"kind": kind, "name": name, "state": state, "prio": prio, "vs": vs, "form": form}


def refused(func, *args: object) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError) as info:
        func(*args)
    return str(info.value)


# --------------------------------------------------------------------------- generic notify


@pytest.mark.parametrize("state", ["MASTER", "BACKUP", "FAULT", "STOP", "DELETED", "{UNKNOWN}"])
def test_generic_instance_notify_every_state(state: str) -> None:
    assert parse_argv(["INSTANCE", "VI_1", state, "100"]) == fields(
        "INSTANCE", "VI_1", state, 100, form="notify")


@pytest.mark.parametrize("state", ["MASTER", "BACKUP", "FAULT", "STOP"])
def test_generic_group_notify_prio_zero(state: str) -> None:
    assert parse_argv(["GROUP", "G1", state, "0"]) == fields("GROUP", "G1", state, 0,
                                                             form="notify")


def test_generic_notify_is_read_from_the_end_after_user_words() -> None:
    # The reference's observed argv: `kb1 I1-generic 'arg with space' INSTANCE VI_1 BACKUP 100`.
    words = ["kb1", "I1-generic", "arg with space", "INSTANCE", "VI_1", "BACKUP", "100"]
    assert parse_argv(words) == fields("INSTANCE", "VI_1", "BACKUP", 100, form="notify")


def test_generic_notify_user_words_that_look_like_keywords_are_ignored() -> None:
    words = ["GROUP", "master", "FAULT", "7", "INSTANCE", "VI_3", "BACKUP", "40"]
    assert parse_argv(words) == fields("INSTANCE", "VI_3", "BACKUP", 40, form="notify")


def test_generic_group_notify_after_user_words() -> None:
    assert parse_argv(["kb1", "G-generic", "GROUP", "G1", "STOP", "0"]) == fields(
        "GROUP", "G1", "STOP", 0, form="notify")


@pytest.mark.parametrize("prio", [0, 1, 40, 100, 254, 255])
def test_generic_notify_accepts_prio_0_to_255(prio: int) -> None:
    assert parse_argv(["INSTANCE", "VI_1", "MASTER", str(prio)])["prio"] == prio


def test_generic_notify_prio_with_leading_zero_is_a_number() -> None:
    assert parse_argv(["INSTANCE", "VI_1", "MASTER", "007"])["prio"] == 7


@pytest.mark.parametrize("prio", ["256", "999", "-1", "+1", "1000", "", "1e2", " 1", "abc",
                                  "\u0661\u0662", "\uff11"])
def test_generic_notify_bad_prio_is_named(prio: str) -> None:
    message = refused(parse_argv, ["INSTANCE", "VI_1", "MASTER", prio])
    assert "generic notify (INSTANCE)" in message
    assert "priority must be a number 0..255" in message
    assert repr(prio) in message


@pytest.mark.parametrize("state", ["MASTR", "master", "UP", "MASTER_PRIORITY", "BACKUP_PRIORITY",
                                   "MASTER_RX_LOWER_PRI", "INIT", ""])
def test_generic_notify_unknown_state_is_named_with_the_accepted_ones(state: str) -> None:
    message = refused(parse_argv, ["INSTANCE", "VI_1", state, "100"])
    assert f"unknown state {state!r}" in message
    assert "MASTER, BACKUP, FAULT, STOP, DELETED" in message


def test_generic_group_notify_bad_state_names_group() -> None:
    message = refused(parse_argv, ["GROUP", "G1", "MASTR", "0"])
    assert "generic notify (GROUP)" in message and "'MASTR'" in message


def test_generic_notify_empty_name_is_refused() -> None:
    assert "the name is empty" in refused(parse_argv, ["INSTANCE", "", "MASTER", "100"])


def test_generic_notify_name_length_limit() -> None:
    assert parse_argv(["INSTANCE", "x" * ka.MAX_NAME, "MASTER", "1"])["name"] == "x" * 512
    message = refused(parse_argv, ["INSTANCE", "x" * (ka.MAX_NAME + 1), "MASTER", "1"])
    assert "longer than 512 characters" in message


# --------------------------------------------------------------------------- short forms


@pytest.mark.parametrize(("verb", "state"), [
    ("master", "MASTER"), ("backup", "BACKUP"), ("fault", "FAULT"), ("stop", "STOP"),
    ("deleted", "DELETED"), ("rx-lower-pri", "MASTER_RX_LOWER_PRI"),
    ("master-rx-lower-pri", "MASTER_RX_LOWER_PRI"),
])
def test_specific_instance_short_form(verb: str, state: str) -> None:
    assert parse_argv([verb, "VI_1"]) == fields("INSTANCE", "VI_1", state, None, form=verb)
    assert parse_argv(["instance", verb, "VI_1"]) == fields("INSTANCE", "VI_1", state, None,
                                                            form=verb)


@pytest.mark.parametrize(("verb", "state"), [
    ("master", "MASTER"), ("backup", "BACKUP"), ("fault", "FAULT"), ("stop", "STOP"),
])
def test_specific_group_short_form(verb: str, state: str) -> None:
    assert parse_argv(["group", verb, "G1"]) == fields("GROUP", "G1", state, None, form=verb)


def test_short_form_words_are_case_insensitive() -> None:
    assert parse_argv(["GROUP", "MASTER", "G1"]) == fields("GROUP", "G1", "MASTER", None,
                                                           form="master")
    assert parse_argv(["Fault", "VI_1"])["state"] == "FAULT"


def test_short_form_name_keeps_its_case() -> None:
    assert parse_argv(["master", "Vi_Mixed"])["name"] == "Vi_Mixed"


@pytest.mark.parametrize("verb", ["deleted", "rx-lower-pri", "master-rx-lower-pri"])
def test_group_has_no_deleted_or_rx_lower_pri_hook(verb: str) -> None:
    message = refused(parse_argv, ["group", verb, "G1"])
    assert f"keepalived has no {verb} hook for sync groups" in message


def test_short_form_without_name_says_name_is_missing() -> None:
    message = refused(parse_argv, ["master"])
    assert "master hook" in message and "missing the instance name" in message
    message = refused(parse_argv, ["group", "backup"])
    assert "missing the group name" in message


def test_short_form_with_extra_words_names_them() -> None:
    message = refused(parse_argv, ["master", "VI_1", "extra", "words"])
    assert "unexpected words after the name" in message and "'extra words'" in message


@pytest.mark.parametrize("prefix", ["group", "instance"])
def test_kind_prefix_alone_says_state_and_name_missing(prefix: str) -> None:
    message = refused(parse_argv, [prefix])
    assert f"{prefix}: missing state and name" in message


@pytest.mark.parametrize(("verb", "state"), [("rs-up", "UP"), ("rs-down", "DOWN")])
def test_rs_short_form(verb: str, state: str) -> None:
    assert parse_argv([verb, "[10.0.0.5]:tcp:80", "[10.0.0.100]:tcp:80"]) == fields(
        "RS", "[10.0.0.5]:tcp:80", state, None, vs="[10.0.0.100]:tcp:80", form=verb)


def test_rs_short_form_vs_with_a_space_is_joined() -> None:
    # "FWM 5" arrives as two words when not quoted in the command string.
    assert parse_argv(["rs-down", "[10.0.0.5]:tcp:80", "FWM", "5"]) == fields(
        "RS", "[10.0.0.5]:tcp:80", "DOWN", None, vs="FWM 5", form="rs-down")
    # ... and as one when quoted.
    assert parse_argv(["rs-up", "[10.0.0.5]:tcp:80", "FWM 5"])["vs"] == "FWM 5"


def test_rs_short_form_ipv6_and_vsgroup() -> None:
    ev = parse_argv(["rs-up", "[fd00::5]:udp:53", "[dns-group]:53"])
    assert (ev["name"], ev["vs"]) == ("[fd00::5]:udp:53", "[dns-group]:53")


@pytest.mark.parametrize(("verb", "state"), [
    ("vs-up", "UP"), ("vs-down", "DOWN"), ("quorum-up", "UP"), ("quorum-down", "DOWN"),
])
def test_vs_short_forms(verb: str, state: str) -> None:
    assert parse_argv([verb, "[192.168.201.15]:tcp:80"]) == fields(
        "VS", "[192.168.201.15]:tcp:80", state, None, form=verb)
    assert parse_argv([verb, "FWM", "5"]) == fields("VS", "FWM 5", state, None, form=verb)


def test_rs_short_form_without_vs_shows_the_expected_form() -> None:
    message = refused(parse_argv, ["rs-up", "[10.0.0.5]:tcp:80"])
    assert "rs-up hook" in message and "expected 'rs-up RS VS'" in message


@pytest.mark.parametrize("verb", ["vs-up", "vs-down", "quorum-up", "quorum-down"])
def test_vs_short_form_without_vs_shows_the_expected_form(verb: str) -> None:
    assert f"expected '{verb} VS'" in refused(parse_argv, [verb])


def test_lvs_short_form_with_group_prefix_is_unknown() -> None:
    message = refused(parse_argv, ["group", "rs-up", "[1.1.1.1]:tcp:80", "[2.2.2.2]:tcp:80"])
    assert message.startswith("unknown form 'group rs-up")


def test_no_arguments_explains_the_usage() -> None:
    message = refused(parse_argv, [])
    assert message.startswith("no arguments")
    assert "INSTANCE|GROUP NAME STATE PRIO" in message and "rs-up|rs-down RS VS" in message


@pytest.mark.parametrize("words", [["promote", "VI_1"], ["INSTANCE", "VI_1", "MASTER"],
                                   ["instance", "VI_1", "MASTER", "100"], ["VI_1"]])
def test_unknown_form_quotes_the_words_and_the_usage(words: list[str]) -> None:
    message = refused(parse_argv, words)
    assert message.startswith(f"unknown form {' '.join(words)!r}")
    assert "expected keepalived's generic notify arguments" in message


def test_unknown_form_quote_is_truncated() -> None:
    message = refused(parse_argv, ["bogus"] * 200)
    assert len(message) < 200 + len(ka.USAGE) + 40


# --------------------------------------------------------------------------- hostile names

HOSTILE = [
    "VI_1; touch /tmp/pwned",
    "$(id)",
    "`id`",
    "a|b&c",
    "a'b\"c",
    "line1\nline2",
    "tab\there",
    "*?[glob]",
    "--config=/etc/passwd",
    "-c",
    "{name}",
    "%s%n",
    "\u00e9t\u00e9 \u2603",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_carried_as_data_in_every_argv_form(name: str) -> None:
    assert parse_argv(["INSTANCE", name, "MASTER", "100"])["name"] == name
    assert parse_argv(["master", name])["name"] == name
    assert parse_argv(["group", "fault", name])["name"] == name
    assert parse_argv(["vs-up", name])["name"] == name


@pytest.mark.parametrize("name", [n for n in HOSTILE if "\n" not in n])
def test_hostile_names_are_carried_as_data_on_fifo_lines(name: str) -> None:
    assert parse_fifo_line(f'INSTANCE "{name}" MASTER 100')["name"] == name


def test_undecodable_argv_bytes_become_backslash_escapes() -> None:
    word = os.fsdecode(b"VI_\xff\xfe;x")  # how Python hands non-UTF-8 argv to the hook
    assert word != "VI_\\xff\\xfe;x"
    assert parse_argv(["INSTANCE", word, "MASTER", "100"])["name"] == "VI_\\xff\\xfe;x"
    assert parse_argv(["backup", word])["name"] == "VI_\\xff\\xfe;x"


def test_safe_text_keeps_valid_text_and_escapes_only_bad_bytes() -> None:
    assert safe_text("caf\u00e9") == "caf\u00e9"
    assert safe_text(os.fsdecode(b"caf\xc3\xa9")) == "caf\u00e9"
    assert safe_text(os.fsdecode(b"a\x80b\xc3")) == "a\\x80b\\xc3"
    assert safe_text(safe_text(os.fsdecode(b"\xff"))) == "\\xff"
    safe_text(os.fsdecode(b"\xff\x00\x01")).encode("utf-8")  # valid UTF-8 afterwards


def test_unknown_form_message_with_undecodable_bytes_is_valid_utf8() -> None:
    message = refused(parse_argv, [os.fsdecode(b"bad\xff")])
    message.encode("utf-8")
    assert "bad\\\\xff" in message  # repr() of the escaped text


# --------------------------------------------------------------------------- FIFO lines

#: The capture in the reference doc §3 (kb1, prio 100), with the fields each line must give.
FIFO_SAMPLE = [
    ('GROUP "G1" BACKUP 0', "GROUP", "G1", "BACKUP", 0),
    ('INSTANCE "VI_1" BACKUP 100', "INSTANCE", "VI_1", "BACKUP", 100),
    ('INSTANCE "VI_2" BACKUP 100', "INSTANCE", "VI_2", "BACKUP", 100),
    ('INSTANCE "VI_3" BACKUP 100', "INSTANCE", "VI_3", "BACKUP", 100),
    ('INSTANCE "VI_2" MASTER 100', "INSTANCE", "VI_2", "MASTER", 100),
    ('INSTANCE "VI_1" MASTER 100', "INSTANCE", "VI_1", "MASTER", 100),
    ('GROUP "G1" MASTER 0', "GROUP", "G1", "MASTER", 0),
    ('INSTANCE "VI_3" MASTER 100', "INSTANCE", "VI_3", "MASTER", 100),
    ('INSTANCE "VI_3" MASTER_PRIORITY 40', "INSTANCE", "VI_3", "MASTER_PRIORITY", 40),
    ('INSTANCE "VI_3" BACKUP 40', "INSTANCE", "VI_3", "BACKUP", 40),
    ('INSTANCE "VI_3" BACKUP_PRIORITY 100', "INSTANCE", "VI_3", "BACKUP_PRIORITY", 100),
    ('INSTANCE "VI_3" MASTER 100', "INSTANCE", "VI_3", "MASTER", 100),
    ('INSTANCE "VI_2" MASTER_RX_LOWER_PRI 100', "INSTANCE", "VI_2", "MASTER_RX_LOWER_PRI", 100),
    ('INSTANCE "VI_3" MASTER_RX_LOWER_PRI 100', "INSTANCE", "VI_3", "MASTER_RX_LOWER_PRI", 100),
    ('INSTANCE "VI_1" FAULT 100', "INSTANCE", "VI_1", "FAULT", 100),
    ('GROUP "G1" FAULT 0', "GROUP", "G1", "FAULT", 0),
    ('INSTANCE "VI_3" DELETED 100', "INSTANCE", "VI_3", "DELETED", 100),
    ('GROUP "G1" MASTER 0', "GROUP", "G1", "MASTER", 0),
    ('INSTANCE "VI_1" STOP 100', "INSTANCE", "VI_1", "STOP", 100),
    ('INSTANCE "VI_2" STOP 100', "INSTANCE", "VI_2", "STOP", 100),
    ('GROUP "G1" STOP 0', "GROUP", "G1", "STOP", 0),
    # the backup node (prio 50)
    ('INSTANCE "VI_3" MASTER 50', "INSTANCE", "VI_3", "MASTER", 50),
    ('INSTANCE "VI_1" STOP 50', "INSTANCE", "VI_1", "STOP", 50),
]


def test_captured_fifo_sample_parses_line_by_line() -> None:
    for line, kind, name, state, prio in FIFO_SAMPLE:
        assert parse_fifo_line(line + "\n") == fields(kind, name, state, prio, form="fifo"), line


def test_captured_fifo_sample_as_raw_bytes_stream() -> None:
    # The reader splits the pipe's bytes on \n; every complete line must parse.
    stream = "".join(line + "\n" for line, *_ in FIFO_SAMPLE).encode()
    lines = stream.decode().split("\n")
    assert lines[-1] == ""
    parsed = [parse_fifo_line(line) for line in lines[:-1]]
    assert [(p["kind"], p["name"], p["state"], p["prio"]) for p in parsed] == [
        tuple(row[1:]) for row in FIFO_SAMPLE]


@pytest.mark.parametrize("state", list(VRRP_STATES))
def test_fifo_instance_line_every_state(state: str) -> None:
    assert parse_fifo_line(f'INSTANCE "VI_9" {state} 77') == fields(
        "INSTANCE", "VI_9", state, 77, form="fifo")


@pytest.mark.parametrize("state", ["MASTER", "BACKUP", "FAULT", "STOP", "DELETED", "{UNKNOWN}"])
def test_fifo_group_line_script_states(state: str) -> None:
    assert parse_fifo_line(f'GROUP "G1" {state} 0') == fields("GROUP", "G1", state, 0,
                                                              form="fifo")


@pytest.mark.parametrize("state", ["MASTER_RX_LOWER_PRI", "MASTER_PRIORITY", "BACKUP_PRIORITY"])
def test_fifo_group_line_with_instance_only_state_is_refused(state: str) -> None:
    message = refused(parse_fifo_line, f'GROUP "G1" {state} 0')
    assert f"keepalived sends {state} for instances only" in message


@pytest.mark.parametrize("name", ['VI "quoted" one', 'a"b', '"', '""', "with space ",
                                  " lead", 'x" MASTER 100', "MASTER 1"])
def test_fifo_names_with_quotes_and_spaces_are_kept_verbatim(name: str) -> None:
    assert parse_fifo_line(f'INSTANCE "{name}" BACKUP 100') == fields(
        "INSTANCE", name, "BACKUP", 100, form="fifo")


def test_fifo_line_strips_crlf() -> None:
    assert parse_fifo_line('INSTANCE "VI_1" MASTER 100\r\n')["prio"] == 100


@pytest.mark.parametrize(("line", "rs", "vs", "state"), [
    ("RS [1.2.3.4]:tcp:80 [192.168.201.15]:tcp:80 DOWN",
     "[1.2.3.4]:tcp:80", "[192.168.201.15]:tcp:80", "DOWN"),
    ("RS [1.2.3.4]:tcp:80 FWM 5 UP", "[1.2.3.4]:tcp:80", "FWM 5", "UP"),
    ("RS [fd00::1:5]:udp:53 [fd00::100]:udp:53 UP", "[fd00::1:5]:udp:53", "[fd00::100]:udp:53",
     "UP"),
    ("RS [10.0.0.5]:sctp:9 [web-group]:443 DOWN", "[10.0.0.5]:sctp:9", "[web-group]:443",
     "DOWN"),
    ("RS [10.0.0.5]:none:0 [10.0.0.1]:?:0 UP", "[10.0.0.5]:none:0", "[10.0.0.1]:?:0", "UP"),
])
def test_fifo_rs_lines(line: str, rs: str, vs: str, state: str) -> None:
    assert parse_fifo_line(line) == fields("RS", rs, state, None, vs=vs, form="fifo")


@pytest.mark.parametrize(("line", "vs", "state"), [
    ("VS [192.168.201.15]:tcp:80 UP", "[192.168.201.15]:tcp:80", "UP"),
    ("VS FWM 5 DOWN", "FWM 5", "DOWN"),
    ("VS [fd00::100]:tcp:443 UP", "[fd00::100]:tcp:443", "UP"),
    ("VS [vsgroup]:80 DOWN", "[vsgroup]:80", "DOWN"),
])
def test_fifo_vs_lines(line: str, vs: str, state: str) -> None:
    assert parse_fifo_line(line) == fields("VS", vs, state, None, form="fifo")


@pytest.mark.parametrize(("line", "wanted"), [
    ('INSTANCE "VI_1" MASTR 100', "unknown state 'MASTR'"),
    ('INSTANCE "VI_1" master 100', "unknown state 'master'"),
    ('INSTANCE VI_1 MASTER 100', "the name must be in double quotes, found 'VI_1'"),
    ('INSTANCE "VI_1 MASTER 100', "the name must be in double quotes"),
    ('INSTANCE "VI_1" MASTER', "expected 'INSTANCE \"NAME\" STATE PRIO'"),
    ('GROUP "G1"', "expected 'GROUP \"NAME\" STATE PRIO'"),
    ("INSTANCE", "expected 'INSTANCE \"NAME\" STATE PRIO'"),
    ('INSTANCE "" MASTER 100', "the name is empty"),
    ('INSTANCE "VI_1" MASTER 256', "priority must be a number 0..255, found '256'"),
    ('INSTANCE "VI_1" MASTER -5', "priority must be a number 0..255, found '-5'"),
    ('INSTANCE "VI_1" MASTER x', "priority must be a number 0..255, found 'x'"),
    ('INSTANCE "VI_1" MASTER 1000', "found '1000'"),
    ("VS [1.1.1.1]:tcp:80 SIDEWAYS", "expected UP or DOWN at the end"),
    ("VS UP", "missing the virtual server"),
    ("VS", "expected UP or DOWN at the end"),
    ("RS [1.1.1.1]:tcp:80 UP", "expected 'RS <rs> <vs> UP|DOWN'"),
    ("RS UP", "expected 'RS <rs> <vs> UP|DOWN'"),
    ("RS [1.1.1.1]:tcp:80 [2.2.2.2]:tcp:80 up", "expected UP or DOWN at the end"),
    ("", "unknown FIFO line ''"),
    ("HELLO keepalived", "expected INSTANCE, GROUP, VS or RS at the start"),
    ('instance "VI_1" MASTER 100', "expected INSTANCE, GROUP, VS or RS at the start"),
    (' INSTANCE "VI_1" MASTER 100', "unknown FIFO line"),
])
def test_malformed_fifo_lines_name_the_problem(line: str, wanted: str) -> None:
    message = refused(parse_fifo_line, line)
    assert wanted in message, message


def test_malformed_fifo_line_message_names_line_kind() -> None:
    assert refused(parse_fifo_line, 'GROUP "G1" MASTR 0').startswith("FIFO GROUP line:")
    assert refused(parse_fifo_line, "RS x UP").startswith("FIFO RS line:")


def test_unknown_fifo_line_quote_is_truncated() -> None:
    message = refused(parse_fifo_line, "X" * 10_000)
    assert len(message) < 400


# --------------------------------------------------------------------------- knotify send


@pytest.mark.parametrize("state", ["MASTER", "BACKUP", "FAULT", "STOP", "DELETED"])
def test_build_manual_instance(state: str) -> None:
    assert build_manual("INSTANCE", "VI_1", state, "100") == fields(
        "INSTANCE", "VI_1", state, 100, form="send")


def test_build_manual_is_case_insensitive_for_kind_and_state() -> None:
    assert build_manual("instance", "VI_1", "master", None) == fields(
        "INSTANCE", "VI_1", "MASTER", None, form="send")


@pytest.mark.parametrize("state", ["MASTER_PRIORITY", "BACKUP_PRIORITY", "MASTER_RX_LOWER_PRI"])
def test_build_manual_instance_fifo_only_states(state: str) -> None:
    assert build_manual("INSTANCE", "VI_3", state, "40")["state"] == state


def test_build_manual_group_prio_defaults_to_zero() -> None:
    assert build_manual("GROUP", "G1", "MASTER", None) == fields("GROUP", "G1", "MASTER", 0,
                                                                 form="send")


@pytest.mark.parametrize("state", ["MASTER_PRIORITY", "BACKUP_PRIORITY", "MASTER_RX_LOWER_PRI"])
def test_build_manual_refuses_instance_only_states_for_a_group(state: str) -> None:
    # keepalived never sends these for groups, and the router refuses them on the wire.
    message = refused(build_manual, "GROUP", "G1", state, None)
    assert repr(state) in message and "GROUP" in message


def test_build_manual_rs_splits_rs_and_vs_at_the_first_space() -> None:
    assert build_manual("RS", "[10.0.0.5]:tcp:80 FWM 5", "down", None) == fields(
        "RS", "[10.0.0.5]:tcp:80", "DOWN", None, vs="FWM 5", form="send")


def test_build_manual_vs() -> None:
    assert build_manual("vs", "FWM 5", "up", None) == fields("VS", "FWM 5", "UP", None,
                                                             form="send")


@pytest.mark.parametrize(("args", "wanted"), [
    (("INSTANCE", "VI_1", "MASTR", None), "state 'MASTR' is not a INSTANCE state"),
    (("INSTANCE", "VI_1", "UP", None), "state 'UP' is not a INSTANCE state"),
    (("VS", "FWM 5", "MASTER", None), "state 'MASTER' is not a VS state; expected UP or DOWN"),
    (("RS", "[1.1.1.1]:tcp:80", "UP", None), "send RS: give the name as 'RS VS'"),
    (("INSTANCE", "VI_1", "MASTER", "300"), "send: priority must be a number 0..255"),
    (("INSTANCE", "VI_1", "MASTER", "high"), "found 'high'"),
    (("INSTANCE", "", "MASTER", None), "send: the name is empty"),
    (("CLUSTER", "c", "MASTER", None), "kind 'CLUSTER' is not one of INSTANCE, GROUP, VS, RS"),
    (("PEER", "p", "UP", None), "kind 'PEER' is not one of"),
])
def test_build_manual_errors_name_what_is_wrong(args: tuple[str, str, str, str | None],
                                                wanted: str) -> None:
    assert wanted in refused(build_manual, *args)


# --------------------------------------------------------------------------- properties

# (No keepalived name holds a NUL: its config and argv are C strings. One is refused.)
names = st.text(st.characters(codec="utf-8", exclude_characters="\n\r\0"),
                min_size=1, max_size=ka.MAX_NAME)
user_words = st.lists(st.text(max_size=20), max_size=5)


@given(words=user_words, kind=st.sampled_from(VRRP_KINDS), name=names,
       state=st.sampled_from(SCRIPT_STATES), prio=st.integers(0, 255))
def test_property_generic_notify_any_user_words_any_name(
    words: list[str], kind: str, name: str, state: str, prio: int
) -> None:
    got = parse_argv([*words, kind, name, state, str(prio)])
    assert (got["kind"], got["name"], got["state"], got["prio"]) == (kind, name, state, prio)


@given(kind=st.sampled_from(VRRP_KINDS), name=names,
       state=st.sampled_from(SCRIPT_STATES), prio=st.integers(0, 255))
def test_property_fifo_line_any_name_round_trips(kind: str, name: str, state: str,
                                                 prio: int) -> None:
    got = parse_fifo_line(f'{kind} "{name}" {state} {prio}\n')
    assert (got["kind"], got["name"], got["state"], got["prio"]) == (kind, name, state, prio)


@given(line=st.text(max_size=300))
def test_property_fifo_parser_never_raises_anything_but_parse_error(line: str) -> None:
    try:
        parse_fifo_line(line)
    except ParseError as exc:
        assert str(exc)


@given(words=st.lists(st.text(max_size=30), max_size=8))
def test_property_argv_parser_never_raises_anything_but_parse_error(words: list[str]) -> None:
    try:
        got = parse_argv(words)
    except ParseError as exc:
        assert str(exc)
    else:
        assert got["kind"] in ("INSTANCE", "GROUP", "VS", "RS")


def test_knotify_send_refuses_an_impossible_event_before_sending(kenv: KEnv) -> None:
    proc = kenv.cli("send", "GROUP", "G1", "MASTER_PRIORITY", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("knotify: state 'MASTER_PRIORITY' is not a GROUP state")
    assert kenv.spooled() == []  # nothing the router would refuse is spooled
    proc = kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "256", check=False)
    assert proc.returncode == 2 and "priority must be a number 0..255" in proc.stderr


@pytest.mark.parametrize("parse", [
    lambda: parse_fifo_line('INSTANCE "VI\0x" MASTER 100'),
    lambda: parse_argv(["INSTANCE", "VI\0x", "MASTER", "100"]),
    lambda: build_manual("RS", "[10.0.0.5]:tcp:80 [10.0.0.1]:tcp:80\0", "UP", None),
])
def test_a_name_with_nul_is_refused(parse: Any) -> None:
    with pytest.raises(ParseError, match="NUL"):
        parse()
