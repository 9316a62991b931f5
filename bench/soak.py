"""Hostile soak: good events from 4 senders while everything else goes wrong.

For ``--duration`` seconds a real router gets, at the same time:

* 4 sender processes of good events, each as a hook would (``client.deliver``: the ack
  within 250 ms, else the spool), some dated a year ahead or behind from other boots
  (bad clocks), some firing an exec action that appends the event's id to a file;
* a stream of garbage on the control socket (random bytes, hostile JSON, lone
  surrogates, deep nesting, huge numbers, messages over the size limit, too many events,
  unknown ops) and over TCP with CURVE (an authorised key sending garbage, events for
  hosts it may not send as, control operations it may not use);
* odd files in ``spool/new`` (not JSON, empty, arrays, non-events, bad versions);
  unless ``--no-hostile-spool``, also FIFOs, folders and symlinks named ``*.json`` and deeply
  nested JSON (issue 9 part B's findings);
* idle TCP connections, connections that stop half way through the handshake, and
  idle connections to the control socket, reopened whenever the router closes them;
* SIGKILL of the router every ``--kill-every`` seconds (then a restart).

Meanwhile ``status`` is asked every second (latency recorded) and the router's RSS
sampled. At the end (spool replayed, router stopped) the journal is read: every good
event must be there exactly once, no action may have run twice, status must have
answered every time the router was up. Run from the repository root::

    .venv/bin/python bench/soak.py                 # 10 minutes, a kill every 45 s
    .venv/bin/python bench/soak.py --duration 180 --kill-every 40
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import select
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    KEnv,
    Router,
    load,
    machine,
    percentile,
    proc_status,
    revision,
    run_tag,
    table,
)

from knotify import client, keepalived, spool, zmtp
from knotify.stamp import stamp

YEAR_NS = 365 * 86400 * 10**9
SENDERS = 4


def config(kenv: KEnv, port: int, out: Path) -> None:
    keys, clients = kenv.root / "keys", kenv.root / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    from knotify import transport

    if not (keys / "router.key_secret").exists():
        transport.make_keys(str(keys), "router")
        transport.make_keys(str(keys), "soak")
        (clients / "soak.key").write_bytes((keys / "soak.key").read_bytes())
    kenv.config.write_text(f"""
[paths]
runtime_dir = "{kenv.runtime}"
state_dir = "{kenv.state}"

[router]
listen = ["tcp://127.0.0.1:{port}"]
handshake_timeout = "2s"
spool_interval = "500ms"

[router.curve]
secret_key = "{keys}/router.key_secret"
clients = "{clients}"

[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"

[[rule]]
id = "record"
name = "VI_ACT*"
[[rule.action]]
type = "exec"
argv = ["/bin/sh", "-c", "printf '%s\\\\n' \\"$KNOTIFY_ID\\" >> {out}"]
timeout = "30s"
""")


# -- good senders ---------------------------------------------------------------------------


def good_sender(runtime: str, spool_dir: str, sender: int, tag: str, stop_at_wall: float,
                rate: float, ids_path: str) -> None:
    """One sender process: events as hooks send them, until ``stop_at_wall`` (time.time())."""
    settings = client.Settings()
    settings.endpoints = [f"ipc://{runtime}/knotify.sock"]
    settings.ack_timeout = 0.25
    settings.spool_dir = spool_dir
    settings.host = f"soak-{sender}"
    rng = random.Random(sender)
    i = 0
    with open(ids_path, "w") as ids:
        while time.time() < stop_at_wall:
            started = time.monotonic()
            name = f"VI_ACT_{i % 5}" if i % 10 == 0 else f"VI_{i % 20}"
            state = "MASTER" if (i // 20) % 2 == 0 else "BACKUP"
            fields = keepalived.parse_argv(["INSTANCE", name, state, "100"])
            event = stamp(fields, "hook", settings.host, spool.next_seq(spool_dir),
                          time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME))
            event["id"] = f"{tag}{sender:02x}{i:014x}"
            roll = rng.random()
            if roll < 0.02:  # a clock a year ahead, from another boot
                event["ts_ns"] = time.time_ns() + YEAR_NS
                event["boot"] = f"skewed-{rng.randrange(1000)}"
            elif roll < 0.04:  # a year behind, another boot
                event["ts_ns"] = time.time_ns() - YEAR_NS
                event["boot"] = f"old-{rng.randrange(1000)}"
            outcome = client.deliver(event, settings)
            if outcome == "lost":
                raise SystemExit(f"sender {sender}: event {event['id']} lost")
            ids.write(f"{event['id']}\n")
            ids.flush()
            i += 1
            pause = 1.0 / rate - (time.monotonic() - started)
            if pause > 0:
                time.sleep(pause)


# -- hostile workers (threads of this process) ----------------------------------------------


SURROGATE = "\\ud800"


def garbage_messages(rng: random.Random, max_message: int) -> bytes:
    """One hostile message."""
    ev = {"v": 1, "id": os.urandom(12).hex(), "host": "garbage", "kind": "INSTANCE",
          "name": "VI_G", "state": "MASTER", "source": "send"}
    text = json.dumps({"v": 1, "op": "event", "event": ev})
    choices: list[bytes] = [
        os.urandom(rng.randrange(1, 2000)),
        text.replace('"VI_G"', f'"VI{SURROGATE}"').encode(),
        text.replace('"garbage"', '"g\\u0000x"').encode(),
        b"[" * rng.randrange(2000, 100_000),
        b'{"a":' * rng.randrange(1100, 20_000),
        b'{"v":1,"op":"silence_add","matchers":["host=x"],"duration_s":1' + b"0" * 400 + b"}",
        f'{{"v":1,"op":"history","host":"h{SURROGATE}"}}'.encode(),
        b'{"v":true,"op":"ping"}',
        b'{"v":1,"op":"' + os.urandom(4).hex().encode() + b'"}',
        json.dumps({"v": 1, "op": "events", "events": [ev] * 1500}).encode(),
        json.dumps({"v": 1, "op": "event", "event": {**ev, "extra": {"a": {"b": {"c": [
            [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}}}}}).encode(),
        json.dumps({"v": 1, "op": "event", "event": {**ev, "prio": 256}}).encode(),
        json.dumps({"v": 1, "op": "event", "event": {**ev, "seq": -1}}).encode(),
        json.dumps({"v": 1, "op": "event", "event": {**ev, "kind": "CLUSTER"}}).encode(),
        json.dumps({"v": 1, "op": "heartbeat", "host": "garbage", "interval_s": 1e300}).encode(),
        json.dumps({"v": 1, "op": "status", "offset": -5}).encode(),
        json.dumps({"v": 1, "op": "history", "limit": 10, "before": 2**70}).encode(),
        b"x" * (max_message + 1000),  # over the limit: libzmq drops the connection
    ]
    return rng.choice(choices)


class Hostile:
    """The hostile threads; ``stop`` ends them. Counts what each did."""

    def __init__(self, kenv: KEnv, port: int, hostile_spool: bool, seed: int = 9) -> None:
        self.kenv = kenv
        self.port = port
        self.hostile_spool = hostile_spool
        self.stop = threading.Event()
        self.counts: collections.Counter[str] = collections.Counter()
        self.rng = random.Random(seed)
        self.threads = [threading.Thread(target=t, daemon=True) for t in (
            self.garbage_local, self.garbage_curve, self.spool_files, self.idle_connections)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def garbage_local(self) -> None:
        rng = random.Random(1)
        endpoint = f"ipc://{self.kenv.runtime}/knotify.sock"
        while not self.stop.is_set():
            try:
                zmtp.request(endpoint, garbage_messages(rng, 256 * 1024), 2.0)
                self.counts["garbage_answered"] += 1
            except (OSError, ValueError):
                self.counts["garbage_unanswered"] += 1
            self.stop.wait(0.01)

    def garbage_curve(self) -> None:
        import zmq

        from knotify import transport

        keys = self.kenv.root / "keys"
        curve = transport.load_client(str(keys / "router.key"), str(keys / "soak.key_secret"))
        rng = random.Random(2)
        ctx = zmq.Context()
        try:
            while not self.stop.is_set():
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.curve_serverkey = curve.server_public
                sock.curve_publickey = curve.public
                sock.curve_secretkey = curve.secret
                sock.connect(f"tcp://127.0.0.1:{self.port}")
                for _ in range(50):
                    if self.stop.is_set():
                        break
                    pick = rng.random()
                    if pick < 0.4:
                        payload = garbage_messages(rng, 128 * 1024)
                    elif pick < 0.7:  # events for a host this key may not send as
                        payload = json.dumps({"v": 1, "op": "event", "event": {
                            "v": 1, "id": os.urandom(12).hex(), "host": "someone-else",
                            "kind": "INSTANCE", "name": "VI_X", "state": "MASTER",
                            "source": "send"}}).encode()
                    else:  # control operations it may not use
                        payload = json.dumps(rng.choice([
                            {"v": 1, "op": "reload"}, {"v": 1, "op": "peer_forget",
                                                       "host": "soak-0"},
                            {"v": 1, "op": "silence_add", "matchers": ["host=*"],
                             "duration_s": 3600, "reason": "hostile"},
                            {"v": 1, "op": "history"}])).encode()
                    sock.send(payload)
                    if sock.poll(2000):
                        sock.recv()
                        self.counts["curve_answered"] += 1
                    else:
                        self.counts["curve_unanswered"] += 1
                        break  # (dropped for size, or the router is down): a new one
                    self.stop.wait(0.02)
                sock.close(0)
        finally:
            ctx.term()

    def spool_files(self) -> None:
        rng = random.Random(3)
        new = self.kenv.state / "spool" / "new"
        tmp = self.kenv.state / "spool" / "tmp"
        n = 0
        while not self.stop.wait(0.5):
            if not new.is_dir() or not tmp.is_dir():
                continue
            n += 1
            name = f"00000000000000000000-odd{n:06d}.json"
            bodies = [b"not json", b"", b"[]", b'{"hello": "world"}',
                      json.dumps({"v": 2, "id": "x" * 16}).encode(),
                      b'{"v":1,"id":"' + b"y" * 16 + b'","host":"h\\ud800"}']
            kinds = ["file"] * 6
            if self.hostile_spool:
                bodies.append(b"[" * 100_000)
                kinds += ["file", "fifo", "dir", "symlink"]
            kind = rng.choice(kinds)
            try:
                if kind == "fifo":
                    os.mkfifo(new / name)
                elif kind == "dir":
                    (new / name).mkdir()
                elif kind == "symlink":
                    os.symlink("/dev/zero", new / name)
                else:
                    (tmp / name).write_bytes(rng.choice(bodies))
                    os.rename(tmp / name, new / name)
                self.counts[f"spool_{kind}"] += 1
            except OSError:
                pass

    def idle_connections(self) -> None:
        target_tcp, target_half, target_ipc = 300, 50, 20
        conns: dict[socket.socket, str] = {}

        def open_one(kind: str) -> None:
            try:
                if kind == "ipc":
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(str(self.kenv.runtime / "knotify.sock"))
                else:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                    if kind == "half":
                        s.sendall(b"\xff" + b"\x00" * 8)  # a ZMTP signature, cut short
                s.setblocking(False)
                conns[s] = kind
                self.counts[f"idle_{kind}_opened"] += 1
            except OSError:
                self.counts["idle_open_failed"] += 1

        while not self.stop.is_set():
            have = collections.Counter(conns.values())
            for kind, want in (("tcp", target_tcp), ("half", target_half), ("ipc", target_ipc)):
                for _ in range(want - have[kind]):
                    open_one(kind)
            readable, _, _ = select.select(list(conns), [], [], 1.0)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:  # closed by the router (handshake timeout, or it died)
                    self.counts[f"idle_{conns.pop(s)}_closed"] += 1
                    s.close()
        for s in conns:
            s.close()


# -- the run --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Probe(threading.Thread):
    """Asks ``status`` every second and samples the router's RSS."""

    def __init__(self, kenv: KEnv) -> None:
        super().__init__(daemon=True)
        self.endpoint = f"ipc://{kenv.runtime}/knotify.sock"
        self.router: Router | None = None
        self.up_since: float | None = None  # monotonic time the current router was ready
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[tuple[float, str]] = []
        self.rss_kib: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(1.0):
            router, up_since = self.router, self.up_since
            if router is None or up_since is None or router.proc.poll() is not None:
                continue
            started = time.monotonic()
            try:
                raw = zmtp.request(self.endpoint, b'{"v":1,"op":"status"}', 5.0)
                ok = json.loads(raw).get("ok") is True
                error = "" if ok else raw[:200].decode(errors="replace")
            except (OSError, ValueError) as exc:
                ok, error = False, str(exc)
            if self.router is not router or self.up_since != up_since:
                continue  # killed meanwhile: that answer does not count
            if ok:
                self.latencies.append(time.monotonic() - started)
            else:
                self.failures.append((started, error))
            try:
                self.rss_kib.append(proc_status(router.pid)["VmRSS"])
            except (OSError, KeyError):
                pass


def _ids(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for path in paths:
        out.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
    return out


def run(duration: float, kill_every: float, rate: float, hostile_spool: bool,
        say: Any = print) -> dict[str, Any]:
    """The soak; results (and ``problems``, empty when every check held)."""
    kenv = KEnv("kns-")
    port = free_port()
    out = kenv.root / "actions.txt"
    out.touch()
    config(kenv, port, out)
    tag = run_tag()
    spool_dir = str(kenv.state / "spool")
    probe = Probe(kenv)
    router = Router(kenv)
    probe.router, probe.up_since = router, time.monotonic()
    probe.start()
    hostile = Hostile(kenv, port, hostile_spool)
    hostile.start()
    ctx = multiprocessing.get_context("spawn")
    stop_at = time.time() + duration
    id_files = [kenv.root / f"ids-{i}.txt" for i in range(SENDERS)]
    senders = [ctx.Process(target=good_sender, args=(
        str(kenv.runtime), spool_dir, i, tag, stop_at, rate, str(id_files[i])), daemon=True)
        for i in range(SENDERS)]
    for proc in senders:
        proc.start()
    kills = 0
    unexpected_exits: list[str] = []
    started = time.monotonic()
    next_kill = started + kill_every * random.uniform(0.7, 1.3)
    try:
        while time.time() < stop_at:
            time.sleep(0.5)
            if router.proc.poll() is not None:
                unexpected_exits.append(f"exit {router.proc.returncode}: {router.log_tail(5)}")
                probe.up_since = None
                router = Router(kenv)
                probe.router, probe.up_since = router, time.monotonic()
            if time.monotonic() >= next_kill and time.time() < stop_at - 10:
                probe.up_since = None
                router.proc.send_signal(signal.SIGKILL)
                router.proc.wait()
                kills += 1
                say(f"  {time.monotonic() - started:5.0f}s  SIGKILL #{kills}")
                time.sleep(random.uniform(0.5, 2.0))
                router = Router(kenv)
                probe.router, probe.up_since = router, time.monotonic()
                next_kill = time.monotonic() + kill_every * random.uniform(0.7, 1.3)
        for proc in senders:
            proc.join(timeout=60)
        sender_exits = [proc.exitcode for proc in senders]
        hostile.join()
        # Everything spooled is replayed, every action started is over.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = router.stats()
            if (stats["spool_depth"] == 0 and stats["actions_queued"] == 0
                    and stats["actions_running"] == 0):
                break
            time.sleep(0.5)
        final = router.stats()
        probe.stop.set()
        probe.join(timeout=10)
        code = router.stop()
    finally:
        probe.stop.set()
        hostile.stop.set()
        for proc in senders:
            if proc.is_alive():
                proc.kill()
        if router.proc.poll() is None:
            router.proc.kill()

    sent = _ids(id_files)
    db = sqlite3.connect(f"file:{kenv.journal}?mode=ro", uri=True)
    try:
        journaled = collections.Counter(row[0] for row in db.execute(
            "SELECT id FROM events WHERE substr(id, 1, ?) = ?", (len(tag), tag)))
        runs = list(db.execute(
            "SELECT event_id, rule, idx, status FROM runs WHERE rule = 'record'"))
    finally:
        db.close()
    missing = [i for i in sent if journaled[i] == 0]
    doubled = [i for i, n in journaled.items() if n > 1]
    ran = collections.Counter(line.strip() for line in out.read_text().splitlines())
    ran_twice = [i for i, n in ran.items() if n > 1]
    run_rows = collections.Counter((e, r, x) for e, r, x, _ in runs)
    statuses = collections.Counter(status for *_, status in runs)
    log_text = (kenv.root / "router.log").read_text(errors="replace")
    faults = [json.loads(line) for line in log_text.splitlines()
              if '"router.fault"' in line or '"task.crashed"' in line]
    latencies = probe.latencies or [0.0]
    results: dict[str, Any] = {
        "duration_s": duration, "kills": kills, "good_sent": len(sent),
        "good_journaled": sum(1 for i in sent if journaled[i] == 1),
        "missing": len(missing), "journaled_twice": len(doubled),
        "actions_recorded": len(ran), "actions_ran_twice": len(ran_twice),
        "run_rows_twice": sum(1 for n in run_rows.values() if n > 1),
        "runs_by_status": dict(statuses),
        "status_asked": len(probe.latencies) + len(probe.failures),
        "status_failed": len(probe.failures),
        "status_max_s": round(max(latencies), 3),
        "status_p99_s": round(percentile(latencies, 99), 3),
        "status_over_1s": sum(1 for x in latencies if x > 1.0),
        "rss_max_mib": round(max(probe.rss_kib or [0]) / 1024, 1),
        "faults_logged": len(faults), "faults": final.get("faults", {}),
        "unexpected_exits": unexpected_exits, "sender_exits": sender_exits,
        "final_exit": code, "hostile": dict(hostile.counts),
        "rejected": final.get("rejected"), "unauthorised": final.get("unauthorised"),
        "clock_ahead": final.get("clock_ahead"), "root": str(kenv.root),
    }
    problems = []
    if missing:
        problems.append(f"{len(missing)} good events missing from the journal: {missing[:5]}")
    if doubled or ran_twice or results["run_rows_twice"]:
        problems.append(f"twice: events {doubled[:5]}, actions {ran_twice[:5]}")
    if probe.failures:
        problems.append(f"status failed {len(probe.failures)} times: {probe.failures[:3]}")
    if unexpected_exits or any(c != 0 for c in sender_exits) or code != 0:
        problems.append(f"exits: router {unexpected_exits} final {code}, senders "
                        f"{sender_exits}")
    if faults:
        problems.append(f"{len(faults)} faults logged: {[f.get('reason') for f in faults[:5]]}")
    results["problems"] = problems
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (600)")
    parser.add_argument("--kill-every", type=float, default=45.0,
                        help="seconds between SIGKILLs, +-30%% (45)")
    parser.add_argument("--rate", type=float, default=25.0,
                        help="good events/s per sender (25; 4 senders)")
    parser.add_argument("--no-hostile-spool", dest="hostile_spool", action="store_false",
                        help="leave out the FIFOs, folders, symlinks and deep JSON in "
                        "spool/new")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = parser.parse_args()
    print(f"knotify {revision()} on {machine()}; load {load()}")
    print(f"soak: {args.duration:g}s, SIGKILL every ~{args.kill_every:g}s, {SENDERS} senders "
          f"x {args.rate:g} events/s, hostile spool files: {args.hostile_spool}")
    results = run(args.duration, args.kill_every, args.rate, args.hostile_spool)
    if args.json:
        print(json.dumps(results, indent=2))
    rows = [[k, str(results[k])] for k in (
        "kills", "good_sent", "good_journaled", "missing", "journaled_twice",
        "actions_recorded", "actions_ran_twice", "runs_by_status", "status_asked",
        "status_failed", "status_p99_s", "status_max_s", "status_over_1s", "rss_max_mib",
        "faults_logged", "rejected", "unauthorised", "clock_ahead")]
    print(table(["what", "value"], rows))
    print(f"hostile: {results['hostile']}")
    print(f"load after: {load()}")
    held = not results["problems"]
    print("every check held" if held else "PROBLEMS:\n  " + "\n  ".join(results["problems"]))
    answered = results["status_over_1s"] == 0 and not results["status_failed"]
    print(f"targets: status within 1 s every second: {'MET' if answered else 'NOT MET'}; "
          f"RSS < 100 MiB: {'MET' if results['rss_max_mib'] < 100 else 'NOT MET'}")
    if not args.keep:
        import shutil

        shutil.rmtree(results["root"], ignore_errors=True)
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
