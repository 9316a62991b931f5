"""The spool as hostile input (issue 9, findings 3 and 9).

With the documented ``keepalived_script`` set-up, ``spool/`` is writable by the hook's
group: whatever sits there may have been put there to freeze or brick the root router.
Only regular files are read; anything else is moved to ``spool/bad`` (or skipped) with
one log line and a count, and one bad file never holds back the good ones. A complete
event left in ``spool/tmp`` by a hook killed between fsync and rename is recovered.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import KEnv, RouterProcess, need, wait_for

from knotify import spool

LOG_RULE = """
[router]
spool_interval = "200ms"
[[rule]]
id = "log"
on = "every"
[[rule.action]]
type = "log"
"""


def wire(name: str, seq: int, ident: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "id": ident or f"{name.lower()}-{seq:08d}", "host": "kb1",
            "kind": "INSTANCE", "name": name, "state": "MASTER", "prio": 100, "seq": seq,
            "source": "hook", **extra}


def names(kenv: KEnv) -> list[str]:
    return sorted(e["name"] for e in kenv.history())


def bad_lines(router: RouterProcess) -> list[dict[str, Any]]:
    return [r for r in router.records() if r.get("event") == "spool.bad_file"]


def stats(kenv: KEnv) -> dict[str, Any]:
    return dict(json.loads(kenv.cli("status", "--json").stdout)["router"])


def new_dir(kenv: KEnv) -> Path:
    d = kenv.spool / "new"
    d.mkdir(parents=True, exist_ok=True)
    (kenv.spool / "tmp").mkdir(parents=True, exist_ok=True)
    return d


# A name that sorts before every real spool file: the hostile file is read first.
FIRST = f"{0:020d}-aaaaaaaa.json"


def hostile(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
        (path / "inside.json").write_text(json.dumps(wire("INSIDE", 1)))
    elif kind == "nested":
        path.write_text("[" * 100_000)
    elif kind == "nested-object":
        path.write_text('{"a":' * 50_000)
    elif kind == "device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null
    elif kind == "symlink":
        target = path.parents[3] / "outside.json"  # beside the state folder
        target.write_text(json.dumps(wire("OUTSIDE", 1)))
        path.symlink_to(target)
    elif kind == "oversized":
        # A valid event, but bigger than any message the router takes on the wire.
        path.write_text(json.dumps(wire("HUGE", 1, extra={"pad": "x" * 300_000})))
    else:  # pragma: no cover
        raise AssertionError(kind)


KINDS = ["fifo", "dir", "nested", "nested-object", "device", "symlink", "oversized"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_file_at_start_is_quarantined_and_the_good_ones_are_replayed(
    kenv: KEnv, router: RouterProcess, kind: str
) -> None:
    if kind == "device":
        need(os.geteuid() == 0, "mknod needs root")
    kenv.write_config(LOG_RULE)
    new = new_dir(kenv)
    hostile(kind, new / FIRST)
    for seq in (1, 2):
        spool.write(str(kenv.spool), wire(f"GOOD_{seq}", seq))
    router.start()  # neither blocked in open() nor refused by a scan that fails
    wait_for(lambda: names(kenv) == ["GOOD_1", "GOOD_2"], 20, what="the good events")
    assert not (new / FIRST).exists() and not (new / FIRST).is_symlink()
    moved = kenv.spool / "bad" / FIRST
    assert moved.exists() or moved.is_symlink(), "kept for the operator in spool/bad"
    [line] = bad_lines(router)
    assert line["level"] == "error" and line["reason"]
    assert stats(kenv)["spool_bad"] == 1
    if kind == "symlink":
        assert moved.is_symlink(), "the link is moved, never followed"
        assert json.loads((kenv.root / "outside.json").read_text())["name"] == "OUTSIDE"
    if kind in ("fifo", "dir", "device", "symlink"):
        assert "not a regular file" in line["reason"]
    assert router.alive


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_file_while_running_neither_freezes_nor_ends_the_spool_loop(
    kenv: KEnv, router: RouterProcess, kind: str
) -> None:
    if kind == "device":
        need(os.geteuid() == 0, "mknod needs root")
    kenv.write_config(LOG_RULE)
    new = new_dir(kenv)
    router.start()
    hostile(kind, new / FIRST)
    spool.write(str(kenv.spool), wire("AFTER", 5))
    # The positive marker: a good file spooled after the bad one is replayed, the
    # router answers, and the loop keeps going for the next one.
    wait_for(lambda: names(kenv) == ["AFTER"], 20, what="the good event after the bad file")
    spool.write(str(kenv.spool), wire("LATER", 6))
    wait_for(lambda: names(kenv) == ["AFTER", "LATER"], 20, what="the next scan")
    assert len(bad_lines(router)) == 1
    assert stats(kenv)["spool_bad"] == 1


def test_an_event_that_fails_inside_the_journal_holds_back_no_good_one(
    kenv: KEnv, router: RouterProcess
) -> None:
    """A file that decodes but makes the batch fail (a lone surrogate SQLite cannot
    store) is tried alone and set aside; the files around it are journaled."""
    kenv.write_config(LOG_RULE)
    spool.write(str(kenv.spool), wire("GOOD_1", 1))
    new = new_dir(kenv)
    (new / f"{2:020d}-poison00.json").write_text(
        '{"v":1,"id":"poison00","host":"kb1","kind":"INSTANCE","name":"POISON",'
        '"state":"MASTER","seq":2,"source":"hook","boot":"\\ud800"}')
    spool.write(str(kenv.spool), wire("GOOD_3", 3))
    router.start()
    wait_for(lambda: {"GOOD_1", "GOOD_3"} <= set(names(kenv)), 20, what="the good events")
    wait_for(lambda: not (new / f"{2:020d}-poison00.json").exists(), 10,
             what="the poison file to leave spool/new")
    # Journaled (if it can be stored) or in spool/bad, never both, never lost silently.
    in_bad = (kenv.spool / "bad" / f"{2:020d}-poison00.json").exists()
    assert in_bad != ("POISON" in names(kenv))
    spool.write(str(kenv.spool), wire("GOOD_4", 4))
    wait_for(lambda: "GOOD_4" in names(kenv), 20, what="the spool loop to go on")


def test_bad_files_set_aside_before_do_not_count_against_a_batch(tmp_path: Path) -> None:
    """A bad file that could not even be moved is remembered and skipped: a batch of
    them cannot hold back the good files behind it."""
    d = str(tmp_path / "spool")
    for seq in range(1, 6):
        spool.write(d, wire("E", seq))
    first = sorted(os.listdir(os.path.join(d, "new")))
    got = spool.pending(d, limit=2, skip=set(first[:3]))
    assert [os.path.basename(p) for p in got] == first[3:5]


# --------------------------------------------------------------------------- links


def test_spool_new_replaced_by_a_symlink_is_not_followed(
    kenv: KEnv, router: RouterProcess
) -> None:
    """The hook's group can rename spool/new and put a link to a root folder there; the
    router must not read, move or delete what the link points at."""
    kenv.write_config(LOG_RULE)
    elsewhere = kenv.root / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / f"{1:020d}-victim01.json"
    victim.write_text(json.dumps(wire("VICTIM", 1)))
    kenv.spool.mkdir(parents=True)
    (kenv.spool / "new").symlink_to(elsewhere)
    router.start()
    spool.write(str(kenv.spool), wire("GOOD", 2))  # the hook's next event
    wait_for(lambda: "GOOD" in names(kenv), 20, what="a good event in a real spool/new")
    assert victim.exists() and "VICTIM" not in names(kenv)
    assert not (kenv.spool / "new").is_symlink()
    assert any(r.get("event") == "spool.not_a_folder" for r in router.records())


def test_spool_bad_replaced_by_a_symlink_receives_nothing_through_it(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(LOG_RULE)
    elsewhere = kenv.root / "etc-like"
    elsewhere.mkdir()
    new = new_dir(kenv)
    (kenv.spool / "bad").symlink_to(elsewhere)
    (new / f"{1:020d}-garbage1.json").write_text("not json")
    spool.write(str(kenv.spool), wire("GOOD", 2))
    router.start()
    wait_for(lambda: names(kenv) == ["GOOD"], 20, what="the good event")
    wait_for(lambda: bad_lines(router), 10, what="the bad file to be reported")
    assert list(elsewhere.iterdir()) == [], "nothing moved through the link"


def test_a_symlinked_sequence_counter_is_never_written_through(
    kenv: KEnv, router: RouterProcess
) -> None:
    """The router (root) takes sequence numbers from spool/seq for its FIFO lines: a link
    there must not make it write into the file it points at."""
    target = kenv.root / "precious"
    target.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    kenv.spool.mkdir(parents=True)
    (kenv.spool / "seq").symlink_to(target)
    assert spool.next_seq(str(kenv.spool)) == 0, "the hook does not follow it either"
    assert target.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n"
    target.chmod(0o644)
    kenv.write_config('group = "nogroup"\n' + LOG_RULE)  # still in [paths]
    router.start()
    assert target.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n"
    st = target.stat()
    assert (oct(st.st_mode & 0o7777), st.st_gid) == (oct(0o644), 0), "not chmod/chown'ed"
    assert not (kenv.spool / "seq").is_symlink()
    kenv.cli("send", "INSTANCE", "VI_1", "MASTER", "100")
    assert target.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n"


# --------------------------------------------------------------------------- spool/tmp


def _old(path: Path, age: float = 600) -> None:
    then = time.time() - age
    os.utime(path, (then, then))


def test_a_complete_event_left_in_tmp_by_a_killed_hook_is_recovered(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(LOG_RULE)
    new_dir(kenv)
    tmp = kenv.spool / "tmp"
    # What spool.write leaves when the hook dies between fsync and rename.
    done = tmp / spool.file_name(wire("KILLED", 1))
    done.write_text(json.dumps(wire("KILLED", 1)))
    _old(done)
    empty = tmp / f"{2:020d}-empty000.json"
    empty.write_bytes(b"")
    _old(empty)
    partial = tmp / f"{3:020d}-partial0.json"
    partial.write_text(json.dumps(wire("PARTIAL", 3))[:40])
    _old(partial)
    # A file a hook is writing right now: left alone.
    fresh = tmp / spool.file_name(wire("FRESH", 4))
    fresh.write_text(json.dumps(wire("FRESH", 4)))
    router.start()
    wait_for(lambda: names(kenv) == ["KILLED"], 20, what="the killed hook's event")
    wait_for(lambda: not empty.exists() and not partial.exists(), 10, what="the clean-up")
    assert (kenv.spool / "bad" / partial.name).exists(), "a cut-off event is kept to read"
    assert fresh.exists(), "a file younger than the grace period may still be written"
    events = {e["name"]: e for e in kenv.history()}
    assert events["KILLED"]["extra"].get("via") == "spool"
    recorded = [r for r in router.records() if r.get("event") == "spool.tmp_recovered"]
    assert len(recorded) == 1 and recorded[0]["path"].endswith(done.name)


def test_a_killed_hooks_tmp_file_is_recovered_while_running(
    kenv: KEnv, router: RouterProcess
) -> None:
    kenv.write_config(LOG_RULE)
    new_dir(kenv)
    router.start()
    tmp = kenv.spool / "tmp" / spool.file_name(wire("KILLED", 7))
    tmp.write_text(json.dumps(wire("KILLED", 7)))
    _old(tmp)
    wait_for(lambda: names(kenv) == ["KILLED"], 20, what="the killed hook's event")
    assert not tmp.exists()


def test_hostile_files_in_tmp_are_not_read(kenv: KEnv, router: RouterProcess) -> None:
    kenv.write_config(LOG_RULE)
    new_dir(kenv)
    tmp = kenv.spool / "tmp"
    os.mkfifo(tmp / f"{1:020d}-fifo0000.json")
    (tmp / f"{2:020d}-nested00.json").write_text("[" * 100_000)
    _old(tmp / f"{2:020d}-nested00.json")
    router.start()
    spool.write(str(kenv.spool), wire("GOOD", 3))
    wait_for(lambda: names(kenv) == ["GOOD"], 20, what="the good event")
    wait_for(lambda: not (tmp / f"{2:020d}-nested00.json").exists(), 10,
             what="the nested file to be set aside")
    assert router.alive


def test_the_agent_recovers_a_killed_hooks_tmp_file_and_reads_safely(
    kenv: KEnv, router: RouterProcess
) -> None:
    """On a sending host (only remote routers) the agent delivers the spool: it too
    recovers what a killed hook left in tmp/, and never opens a FIFO or follows a link."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kenv.write_config(f'[router]\nlisten = ["tcp://127.0.0.1:{port}"]\ninsecure = true\n')
    router.start()
    cfg = kenv.root / "n1.toml"
    cfg.write_text(f'[paths]\nruntime_dir = "{kenv.root}/n1-run"\n'
                   f'state_dir = "{kenv.root}/n1-state"\n'
                   f'[hook]\nhost = "n1"\nendpoints = ["tcp://127.0.0.1:{port}"]\n')
    spool_dir = kenv.root / "n1-state" / "spool"
    (spool_dir / "new").mkdir(parents=True)
    (spool_dir / "tmp").mkdir()
    os.mkfifo(spool_dir / "new" / FIRST)
    left = spool_dir / "tmp" / spool.file_name(wire("KILLED", 1))
    left.write_text(json.dumps({**wire("KILLED", 1), "host": "n1"}))
    _old(left)
    once = kenv.cli("agent", "-c", str(cfg), "--once", "--log-format", "json", check=False,
                    timeout=60)
    assert once.returncode == 0, once.stderr
    assert names(kenv) == ["KILLED"]
    assert not left.exists() and not list((spool_dir / "new").iterdir())
    assert (spool_dir / "bad" / FIRST).exists()


def test_spool_counters_are_on_the_metrics_endpoint(kenv: KEnv, router: RouterProcess) -> None:
    """A file set aside and a recovered tmp file show on /metrics, not only in status."""
    import urllib.request

    from alert_servers import free_port

    port = free_port()
    kenv.write_config(LOG_RULE + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    new = new_dir(kenv)
    os.mkfifo(new / "00000000000000000001-aa.json")
    (new / "00000000000000000002-bb.json").write_text("[" * 5000)
    router.start()

    def metrics() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line.startswith("knotify_spool_") or line.startswith("knotify_hook_")}

    values = wait_for(lambda: (m := metrics()).get("knotify_spool_bad_total") == 2 and m, 20,
                      what="two bad spool files counted on /metrics")
    assert values["knotify_spool_recovered_total"] == 0
    assert values["knotify_spool_scan_errors_total"] == 0
    assert values["knotify_hook_config_problems_total"] == 0
