"""Shared helpers for the benchmarks: a private knotify set-up, a real router, senders.

Nothing here touches real state: every run gets its own temporary folder under
/tmp (short, because an ``ipc://`` socket path must fit in 107 bytes) holding the
runtime dir, the state dir and the config, exactly like the tests' ``KEnv``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Importable from a checkout without installing (the venv has knotify editable anyway).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from knotify import fastjson, keepalived, stamp, zmtp  # noqa: E402

LOG_RULE = """
[[rule]]
id = "bench-log"
on = "every"

[[rule.action]]
type = "log"
"""


class KEnv:
    """A private knotify installation: runtime and state folders, a config file."""

    def __init__(self, prefix: str = "knb-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.runtime = self.root / "run"
        self.state = self.root / "state"
        self.config = self.root / "knotify.toml"
        self.env = dict(os.environ)
        self.env.update({
            "KNOTIFY_RUNTIME_DIR": str(self.runtime),
            "KNOTIFY_STATE_DIR": str(self.state),
            "KNOTIFY_CONFIG": str(self.config),
            "PYTHONUNBUFFERED": "1",
        })
        for name in ("KNOTIFY_ACK_TIMEOUT", "KNOTIFY_ENDPOINT"):
            self.env.pop(name, None)
        atexit.register(self.cleanup)  # also when a run fails half-way
        self.write_config("")

    @property
    def endpoint(self) -> str:
        return "ipc://" + str(self.runtime / "knotify.sock")

    @property
    def journal(self) -> Path:
        return self.state / "journal.db"

    @property
    def spool_dir(self) -> Path:
        return self.state / "spool"

    @property
    def spool_new(self) -> Path:
        return self.spool_dir / "new"

    def write_config(self, body: str, router: str = "") -> None:
        head = f'[paths]\nruntime_dir = "{self.runtime}"\nstate_dir = "{self.state}"\n\n'
        if router:
            head += "[router]\n" + router + "\n\n"
        self.config.write_text(head + body)

    def spooled(self) -> int:
        return len(list(self.spool_new.glob("*.json"))) if self.spool_new.exists() else 0

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class Router:
    """``python -m knotify.cli run`` as a child process, logging JSON lines to a file."""

    def __init__(self, kenv: KEnv, log_level: str = "info",
                 wrap: Sequence[str] = (), discard_log: bool = False,
                 python: str = sys.executable) -> None:
        self.kenv = kenv
        self.log_path = Path(os.devnull) if discard_log else kenv.root / "router.log"
        argv = [python, *wrap, "-m", "knotify.cli", "run", "--log-format", "json",
                "--log-level", log_level]
        with open(self.log_path, "ab") as log:
            # cwd: not the checkout, so ``-m`` imports the knotify of ``python``'s install
            self.proc = subprocess.Popen(argv, env=kenv.env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=kenv.root)
        self.wait_ready()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, op: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        payload = json.dumps({"v": 1, "op": op, **fields}).encode()
        answer: dict[str, Any] = json.loads(zmtp.request(self.kenv.endpoint, payload, timeout))
        return answer

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.request("ping", timeout=1.0).get("ok"):
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"router not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        router: dict[str, Any] = self.request("stats", timeout=30.0)["router"]
        return router

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 120.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"router did not stop within {timeout}s") from None


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / RssAnon / RssFile / RssShmem of a process, in KiB (/proc/PID/status)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "VmSize", "VmPeak", "RssAnon", "RssFile", "RssShmem"):
                out[name] = int(value.split()[0])
    return out


def count_rows(journal: Path, tag: str = "") -> dict[str, Any]:
    """Rows in the journal (read after the router stopped): events and runs by status.

    With ``tag`` (the run's id prefix) also ``tagged``: the events this run sent, and
    ``others``: events it did not send, counted by kind/state/source (e.g. the CLUSTER
    events the router makes itself when every host of an instance reports BACKUP).
    """
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        counts: dict[str, Any] = {
            "events": int(db.execute("SELECT count(*) FROM events").fetchone()[0])}
        for status, n in db.execute("SELECT status, count(*) FROM runs GROUP BY status"):
            counts["runs_" + str(status)] = int(n)
        if tag:
            counts["tagged"] = int(db.execute(
                "SELECT count(*) FROM events WHERE substr(id, 1, ?) = ?",
                (len(tag), tag)).fetchone()[0])
            counts["others"] = {f"{kind}/{state}/{source}": int(n) for kind, state, source, n
                                in db.execute(
                "SELECT kind, state, source, count(*) FROM events "
                "WHERE substr(id, 1, ?) != ? GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 10",
                (len(tag), tag))}
        return counts
    finally:
        db.close()


def runs_by_status(rows: dict[str, Any]) -> dict[str, int]:
    return {k[5:]: int(v) for k, v in rows.items() if k.startswith("runs_")}


# -- the messages senders send ---------------------------------------------------------


BOOT_ID = stamp.boot_id()


def event_message(tag: str, sender: int, i: int, names: int) -> bytes:
    """The i-th request of one sender, as the hook would send it.

    Sender ``s`` is host ``bench-s`` with its own increasing ``seq``; its events go
    round-robin over ``names`` instances whose state flips each round, so every
    event is a real transition (and fires the log rule).
    """
    name = f"VI_{i % names}"
    state = "MASTER" if (i // names) % 2 == 0 else "BACKUP"
    argv = ["INSTANCE", name, state, "100"]
    event: dict[str, object] = {
        "v": 1,
        "id": f"{tag}{sender:02x}{i:014x}",
        "host": f"bench-{sender}",
        "seq": i + 1,
        "ts_ns": time.time_ns(),
        "source": "hook",
        # What the hook also stamps: its fork time on the boot clock, boot id and pid.
        "mono_ns": time.clock_gettime_ns(time.CLOCK_BOOTTIME),
        "boot": BOOT_ID,
        "pid": 1000 + sender,
    }
    event.update(keepalived.parse_argv(argv))
    event["argv"] = argv
    return fastjson.dumps({"v": 1, "op": "event", "event": event}).encode()


def make_messages(tag: str, sender: int, start: int, count: int, names: int) -> list[bytes]:
    return [event_message(tag, sender, i, names) for i in range(start, start + count)]


def run_tag() -> str:
    """16 hex characters unique to one run; ids are tag + sender + index (32 hex)."""
    return os.urandom(8).hex()


def send_pipelined(endpoint: str, messages: list[bytes], window: int, timeout: float = 60.0,
                   rate: float = 0.0, spool_dir: str = "") -> dict[str, Any]:
    """Send through knotify's own ZMTP DEALER with ``window`` requests in flight.

    ``rate`` > 0 paces the sends to that many events/s (0: as fast as acks allow).
    A request the router refuses for now ("busy" when it sheds load, or its journal
    unavailable) is spooled to ``spool_dir``, as the hook does; the router replays it.
    Returns counts (acked, spooled, rejected) and monotonic t_start / t_end (comparable
    across processes on Linux). Replies come back in request order on one connection.
    """
    import json as _json

    from knotify import spool

    dealer = zmtp.Dealer(endpoint, timeout)
    acked = spooled = rejected = 0
    sent = 0
    total = len(messages)
    ok_prefix = b'{"v":1,"ok":true'
    try:
        t_start = time.monotonic()
        while acked + spooled + rejected < total:
            answered = acked + spooled + rejected
            dealer.set_timeout(timeout)
            while sent < total and sent - answered < window:
                if rate:
                    early = t_start + sent / rate - time.monotonic()
                    if early > 0:
                        if sent > answered:
                            break  # read an ack meanwhile
                        time.sleep(early)
                dealer.send(messages[sent])
                sent += 1
            reply = dealer.recv()[0]
            if reply.startswith(ok_prefix):
                acked += 1
            elif spool_dir and (b'"error":"busy' in reply or b"journal unavailable" in reply):
                spool.write(spool_dir, _json.loads(messages[answered])["event"])
                spooled += 1
            else:
                rejected += 1
        t_end = time.monotonic()
    finally:
        dealer.close()
    return {"acked": acked, "spooled": spooled, "rejected": rejected, "t_start": t_start,
            "t_end": t_end}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def knotify_sender(endpoint: str, tag: str, sender: int, start: int, count: int, names: int,
                   window: int, rate: float, spool_dir: str, barrier: Any,
                   results: Any) -> None:
    """A sender process: build its messages, wait for the others, send, report."""
    import resource

    messages = make_messages(tag, sender, start, count, names)
    barrier.wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    out = send_pipelined(endpoint, messages, window, rate=rate, spool_dir=spool_dir)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out.update({
        "sender": sender,
        "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
    })
    results.put(out)


def run_senders(target: Any, args_for: Any, senders: int, timeout: float = 3600.0
                ) -> list[dict[str, Any]]:
    """Start ``senders`` processes running ``target(*args_for(i), barrier, queue)``.

    They all wait on one barrier (with this process) so they start together; returns
    their result dicts.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(senders + 1)
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), barrier, queue), daemon=True)
             for i in range(senders)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=120)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < senders:
        try:
            out.append(queue.get(timeout=1.0))
        except Exception:  # queue.Empty: check that nobody died
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for proc in procs:
                    proc.kill()
                raise RuntimeError(f"sender processes failed (exit codes {dead})") from None
    for proc in procs:
        proc.join(timeout=30)
        if proc.exitcode not in (0, None):
            raise RuntimeError(f"sender process exited {proc.exitcode}")
    return sorted(out, key=lambda r: int(r["sender"]))


# -- statistics and printing -----------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, right-aligned except for the first column."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def revision() -> str:
    """The knotify checkout measured: ``git describe --always --dirty``, if it is a git tree."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def load() -> str:
    """The 1/5/15-minute load averages: how busy the shared machine was."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    py = ".".join(map(str, sys.version_info[:3]))
    return f"{cpus} CPUs ({model or 'unknown CPU'}), Python {py}, {sys.executable}"
