"""The hook → router → journal path with real processes: ordering, loss, spooling."""

from __future__ import annotations

import concurrent.futures as cf
import random
import socket
import time

from conftest import KEnv, RouterProcess, wait_for

LOG_RULE = """
[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"
"""


def test_hook_event_is_journaled_with_stamp(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(LOG_RULE)
    router.start()
    before = time.time_ns()
    proc = kenv.hook("my-own", "words", "INSTANCE", "VI_1", "MASTER", "100")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    # (On a loaded machine the ack may come after 250 ms: the hook spools the event too,
    # and the router's next spool scan finds it journaled already.)
    wait_for(lambda: kenv.spooled() == [], 10, what="nothing left in the spool")
    [ev] = kenv.history()
    # Without [hook] host, the host is this machine's name.
    assert (ev["host"], ev["kind"], ev["name"], ev["reported"], ev["prio"]) == (
        socket.gethostname(), "INSTANCE", "VI_1", "MASTER", 100)
    assert ev["argv"] == ["my-own", "words", "INSTANCE", "VI_1", "MASTER", "100"]
    assert ev["source"] == "hook" and ev["form"] == "notify"
    assert before <= ev["ts_ns"] <= time.time_ns()
    assert ev["seq"] >= 1 and len(ev["id"]) == 32
    assert ev["class"] == "transition" and ev["prev_state"] == "INIT"
    assert [a["status"] for a in ev["actions"]] == ["ok"]


def _mixed_call(i: int) -> list[str]:
    """One of the hook's input forms; the name encodes i so each event can be checked."""
    name = f"VI_{i}"
    forms = [
        ["INSTANCE", name, "MASTER", str(i % 256)],
        ["user", "word", "GROUP", name, "BACKUP", "0"],
        ["master", name],
        ["group", "fault", name],
        ["rs-down", f"[10.0.{i // 256}.{i % 256}]:tcp:80", "[10.9.9.9]:tcp:80"],
        ["vs-up", "FWM", str(i)],
    ]
    return forms[i % len(forms)]


def test_200_concurrent_hooks_all_journaled_and_parsed(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(LOG_RULE)
    router.start()
    calls = [_mixed_call(i) for i in range(200)]
    random.Random(7).shuffle(calls)
    with cf.ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(lambda args: kenv.hook(*args, timeout=60), calls))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    # 200 processes on 2 cores: a hook may miss its 250 ms ack and spool its event (which
    # the router may or may not have journaled already). Once the spool is replayed, every
    # event is in the journal once: a replayed duplicate is recognised, not a new event.
    wait_for(lambda: kenv.spooled() == [], 30, what="the spool to drain")
    events = kenv.history()
    assert len(events) == 200
    by_argv = {tuple(e["argv"]): e for e in events}
    assert len(by_argv) == 200
    for args in calls:
        ev = by_argv[tuple(args)]
        if args[0] == "INSTANCE":
            assert (ev["kind"], ev["name"], ev["reported"], ev["prio"]) == (
                "INSTANCE", args[1], "MASTER", int(args[3]))
        elif args[0] == "user":
            assert (ev["kind"], ev["name"], ev["reported"], ev["prio"]) == (
                "GROUP", args[3], "BACKUP", 0)
        elif args[0] == "master":
            assert (ev["kind"], ev["name"], ev["reported"], ev["prio"]) == (
                "INSTANCE", args[1], "MASTER", None)
        elif args[0] == "group":
            assert (ev["kind"], ev["name"], ev["reported"]) == ("GROUP", args[2], "FAULT")
        elif args[0] == "rs-down":
            assert (ev["kind"], ev["name"], ev["vs"], ev["reported"]) == (
                "RS", args[1], args[2], "DOWN")
        else:
            assert (ev["kind"], ev["name"], ev["reported"]) == ("VS", f"FWM {args[2]}", "UP")
    seqs = [e["seq"] for e in events]
    assert len(set(seqs)) == 200, "the per-host sequence must never repeat"
    ids = {e["id"] for e in events}
    assert len(ids) == 200


def test_router_down_hooks_spool_within_bound_then_all_arrive(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(LOG_RULE + '\n[hook]\nack_timeout = "250ms"\n')
    durations = []
    for i in range(20):
        start = time.monotonic()
        proc = kenv.hook("INSTANCE", f"VI_{i}", "BACKUP", "100")
        durations.append(time.monotonic() - start)
        assert proc.returncode == 0
        assert proc.stderr == ""
    assert len(kenv.spooled()) == 20
    # The bound is the ack timeout; interpreter start-up comes on top (generous for CI noise).
    assert max(durations) < 5.0
    router.start()
    wait_for(lambda: len(kenv.history()) == 20, 20, what="the 20 spooled events")
    events = kenv.history()
    assert {e["name"] for e in events} == {f"VI_{i}" for i in range(20)}
    assert all(e["extra"].get("via") == "spool" for e in events)
    # Replayed oldest first: journal order (newest first in history) follows the sequence.
    seqs = [e["seq"] for e in reversed(events)]
    assert seqs == sorted(seqs)
    wait_for(lambda: kenv.spooled() == [], 10, what="the spool to empty")


def test_spool_replayed_while_router_runs(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(LOG_RULE + '\n[router]\nspool_interval = "200ms"\n')
    router.start()
    # A hook that cannot reach the router (wrong endpoint) spools; the live router picks it up.
    env = dict(kenv.env, KNOTIFY_ENDPOINT=f"ipc://{kenv.root}/nowhere.sock")
    proc = kenv.hook("INSTANCE", "VI_9", "FAULT", "90", env=env)
    assert proc.returncode == 0
    wait_for(lambda: [e for e in kenv.history() if e["name"] == "VI_9"], 10,
             what="the spooled event to be replayed")
    assert kenv.spooled() == []


def test_duplicate_id_is_acked_and_ignored(kenv: KEnv, router: RouterProcess) -> None:
    import json

    from knotify import zmtp

    kenv.write_config(LOG_RULE)
    router.start()
    event = {"v": 1, "id": "a" * 32, "host": "h1", "kind": "INSTANCE", "name": "VI_1",
             "state": "MASTER", "prio": 100, "seq": 1, "ts_ns": time.time_ns(),
             "source": "hook"}
    payload = json.dumps({"v": 1, "op": "event", "event": event}).encode()
    endpoint = f"ipc://{kenv.runtime}/knotify.sock"
    for _ in range(3):
        answer = json.loads(zmtp.request(endpoint, payload, 5))
        assert answer == {"v": 1, "ok": True, "id": "a" * 32}
    events = kenv.history()
    assert len(events) == 1
    assert len(events[0]["actions"]) == 1


def test_same_event_twice_in_one_batch_is_journaled_once(kenv: KEnv, router: RouterProcess) -> None:
    """One ``events`` message (a batch, as the agent sends) holding an event twice: both
    copies are acked, the event is journaled and acted on once."""
    import json

    from knotify import zmtp

    kenv.write_config(LOG_RULE)
    router.start()
    now = time.time_ns()
    twice = {"v": 1, "id": "b" * 32, "host": "h1", "kind": "INSTANCE", "name": "VI_1",
             "state": "MASTER", "prio": 100, "seq": 1, "ts_ns": now, "source": "hook"}
    other = {**twice, "id": "c" * 32, "name": "VI_2", "seq": 2}
    payload = json.dumps({"v": 1, "op": "events", "events": [twice, other, twice]}).encode()
    answer = json.loads(zmtp.request(f"ipc://{kenv.runtime}/knotify.sock", payload, 5))
    assert answer == {"v": 1, "ok": True, "ids": ["b" * 32, "c" * 32, "b" * 32],
                      "rejected": []}
    events = kenv.history()
    assert sorted(e["id"] for e in events) == ["b" * 32, "c" * 32]
    assert [len(e["actions"]) for e in events] == [1, 1]
    stats = json.loads(kenv.cli("status", "--json").stdout)["router"]
    assert (stats["journaled"], stats["duplicates"]) == (2, 1)


def test_spool_file_that_is_not_an_event_is_quarantined_and_the_rest_replayed(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(LOG_RULE)
    assert kenv.hook("INSTANCE", "VI_1", "MASTER", "100").returncode == 0  # router down: spooled
    [good] = kenv.spooled()
    broken = {"00000000000000000000-notjson.json": "{not json",
              "00000000000000000000-noevent.json": '{"v": 1, "id": "abcdefgh12345678"}'}
    for name, text in broken.items():
        (kenv.spool / "new" / name).write_text(text)
    router.start()
    wait_for(lambda: kenv.spooled() == [], 20, what="the spool to be emptied")
    [ev] = kenv.history()
    assert (ev["name"], ev["extra"].get("via")) == ("VI_1", "spool")
    assert good.name.endswith(f"-{ev['id']}.json")
    # The broken files wait in spool/bad/ with their content, each logged with the reason.
    bad = kenv.spool / "bad"
    assert {p.name: p.read_text() for p in bad.iterdir()} == broken
    logged = {r["path"].rsplit("/", 1)[-1]: r for r in router.records()
              if r.get("event") == "spool.bad_file"}
    assert set(logged) == set(broken)
    assert all(r["level"] == "error" and r["reason"] for r in logged.values())
    assert "missing the field 'host'" in logged["00000000000000000000-noevent.json"]["reason"]
    assert router.alive
