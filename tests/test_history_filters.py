"""``knotify history`` as a new user tries it: wildcards as in watch, --id, --transitions.

The patterns are the rules' (``*``, ``?``, ``[`` literal, a leading ``!`` negates) and
run as SQL GLOB in the journal and in the web pages; a property test checks that both
SQL forms agree with :class:`knotify.rules.Pattern` on any name.
"""

from __future__ import annotations

import json
import sqlite3

from conftest import KEnv, RouterProcess
from hypothesis import example, given, settings
from hypothesis import strategies as st

from knotify import sqlglob, zmtp
from knotify.rules import Pattern

RULE = """
[[rule]]
id = "log-all"
[[rule.action]]
type = "log"
"""


def _send(kenv: KEnv, host: str, kind: str, name: str, state: str, prio: str = "") -> str:
    out = kenv.cli("send", "--host", host, kind, name, state, *([prio] if prio else [])).stdout
    return out.split()[1]  # "acked ID (seq N)"


def test_name_host_and_kind_take_wildcards(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    for host, kind, name, state in [
            ("node1", "INSTANCE", "VI_1", "MASTER"), ("node2", "INSTANCE", "VI_2", "BACKUP"),
            ("node1", "INSTANCE", "VI_10", "MASTER"), ("node1", "GROUP", "G1", "MASTER"),
            ("lb1", "RS", "[10.0.0.5]:tcp:80 [10.0.0.100]:tcp:80", "DOWN")]:
        _send(kenv, host, kind, name, state, "100" if kind == "INSTANCE" else "")
    assert {e["name"] for e in kenv.history(name="VI_*")} == {"VI_1", "VI_2", "VI_10"}
    assert {e["name"] for e in kenv.history(name="VI_?")} == {"VI_1", "VI_2"}
    assert {e["name"] for e in kenv.history(name="!VI_*")} == {
        "G1", "[10.0.0.5]:tcp:80"}
    assert {e["name"] for e in kenv.history(name="[10.0.0.5]*")} == {"[10.0.0.5]:tcp:80"}
    assert {e["host"] for e in kenv.history(host="node*")} == {"node1", "node2"}
    assert {e["name"] for e in kenv.history(host="node?", kind="group")} == {"G1"}
    assert kenv.history(name="VI_3*") == []
    text = kenv.cli("history", "--name", "VI_1*").stdout
    assert "VI_10" in text and "VI_1 " in text and "VI_2" not in text


def test_id_finds_the_event_an_alert_names(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    first = _send(kenv, "node1", "INSTANCE", "VI_1", "BACKUP", "100")
    second = _send(kenv, "node1", "INSTANCE", "VI_1", "MASTER", "100")
    [found] = kenv.history(id=second)
    assert found["id"] == second and found["state"] == "MASTER"
    assert found["actions"][0]["status"] == "ok"
    assert [e["id"] for e in kenv.history(id=first[:10])] == [first]
    assert [e["id"] for e in kenv.history(id=first.upper())] == [first]
    text = kenv.cli("history", "--id", second).stdout
    assert second in text and "BACKUP -> MASTER" in text and "log-all#0 log: ok" in text

    missing = kenv.cli("history", "--id", "0" * 32, check=False)
    assert missing.returncode == 1
    assert "no event with id" in missing.stderr and "keep_events" in missing.stderr
    for bad in ("12*", "VI 1", "'; DROP TABLE events; --", "a" * 65):
        proc = kenv.cli("history", "--id", bad, check=False)
        assert proc.returncode == 2 and "not an event id" in proc.stderr, (bad, proc.stderr)
    assert router.alive


def test_id_finds_an_id_that_is_not_hex(kenv: KEnv, router: RouterProcess) -> None:
    """Ids are [A-Za-z0-9_-] (an agent or another sender may choose them), case-sensitive."""
    kenv.write_config(RULE)
    router.start()
    endpoint = "ipc://" + str(kenv.runtime / "knotify.sock")
    ids = ["Agent_Id-0001", "agent_id-0001", "Agent_Id-0002"]
    events = [{"v": 1, "id": ident, "host": "node1", "kind": "INSTANCE", "name": "VI_1",
               "state": state, "prio": 100, "seq": i + 1, "ts_ns": 1_700_000_000_000_000_000 + i,
               "source": "send"}
              for i, (ident, state) in enumerate(zip(ids, ["BACKUP", "MASTER", "BACKUP"],
                                                     strict=True))]
    answer = json.loads(zmtp.request(endpoint, json.dumps(
        {"v": 1, "op": "events", "events": events}).encode(), 10))
    assert answer["ok"] and answer["rejected"] == [], answer
    assert [e["id"] for e in kenv.history(id="Agent_Id-0001")] == ["Agent_Id-0001"]
    assert [e["id"] for e in kenv.history(id="agent_")] == ["agent_id-0001"]
    assert sorted(e["id"] for e in kenv.history(id="Agent_Id")) == ["Agent_Id-0001",
                                                                     "Agent_Id-0002"]
    text = kenv.cli("history", "--id", "agent_id-0001").stdout
    assert "agent_id-0001" in text and "BACKUP -> MASTER" in text
    assert router.alive


def test_transitions_hides_repeats(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(RULE)
    router.start()
    for state in ("BACKUP", "BACKUP", "MASTER", "MASTER", "MASTER", "BACKUP"):
        _send(kenv, "node1", "INSTANCE", "VI_1", state, "100")
    assert len(kenv.history()) == 6
    changes = json.loads(kenv.cli("history", "--json", "--transitions").stdout)
    assert [(e["prev_state"], e["state"]) for e in changes] == [
        ("MASTER", "BACKUP"), ("BACKUP", "MASTER"), ("INIT", "BACKUP")]
    lines = [ln for ln in kenv.cli("history", "--transitions").stdout.splitlines()
             if not ln.startswith(" ")]
    assert len(lines) == 3 and not any("repeat" in ln for ln in lines)


def test_history_op_refuses_bad_filters(kenv: KEnv, router: RouterProcess) -> None:
    router.start()
    endpoint = "ipc://" + str(kenv.runtime / "knotify.sock")
    cases: list[tuple[dict[str, object], str]] = [
        ({"id": 12}, "'id'"), ({"id": "z*"}, "'id'"), ({"id": "a" * 65}, "'id'"),
        ({"transitions": "yes"}, "'transitions'"), ({"name": ["VI_*"]}, "'name'"),
        ({"host": "x" * 300}, "'host'")]
    for fields, word in cases:
        payload = json.dumps({"v": 1, "op": "history", **fields}).encode()
        answer = json.loads(zmtp.request(endpoint, payload, 5))
        assert answer["ok"] is False and word in answer["error"], (fields, answer)
    assert router.alive
    assert kenv.history() == []


_ALPHABET = "ab1_*?[]!"


@settings(max_examples=300, deadline=None)
@example(pattern="*", value="*1")  # the rules' matcher took the value's '*' literally
@example(pattern="a*", value="a*b")
@given(pattern=st.text(_ALPHABET, min_size=1, max_size=6),
       value=st.text("ab1_[]!*?", max_size=6))
def test_sql_patterns_agree_with_rule_patterns(pattern: str, value: str) -> None:
    """The journal (``history``) and the web pages build their filters with these."""
    want = Pattern.parse([pattern])(value)
    db = sqlite3.connect(":memory:")
    sql, args = sqlglob.glob_clause("v", pattern)
    assert bool(db.execute(f"SELECT {sql} FROM (SELECT ? AS v)", (*args, value)).fetchone()[0]) \
        == want, (pattern, value, args)
