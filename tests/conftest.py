"""Shared fixtures: a private knotify set-up per test, a real router process, the CLI.

Everything runs for real: the router is ``python -m knotify.cli run`` in a
subprocess, hooks are the installed ``knotify-notify`` script, the journal is a
SQLite file. Tests that need root or keepalived skip on a laptop with the reason
and fail under CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip with ``reason`` on a laptop; under CI a missing requirement is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail saying what we waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class KEnv:
    """A private knotify installation: runtime and state folders, a config, helpers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "run"
        self.state = root / "state"
        self.config = root / "knotify.toml"
        self.env = dict(os.environ)
        self.env.update({
            "KNOTIFY_RUNTIME_DIR": str(self.runtime),
            "KNOTIFY_STATE_DIR": str(self.state),
            "KNOTIFY_CONFIG": str(self.config),
            "PYTHONUNBUFFERED": "1",
        })
        self.env.pop("KNOTIFY_ACK_TIMEOUT", None)
        self.env.pop("KNOTIFY_ENDPOINT", None)
        self.write_config("")

    @property
    def spool(self) -> Path:
        return self.state / "spool"

    @property
    def journal(self) -> Path:
        return self.state / "journal.db"

    def write_config(self, body: str) -> Path:
        """The config file: ``[paths]`` pointing at this env, then ``body``."""
        head = f'[paths]\nruntime_dir = "{self.runtime}"\nstate_dir = "{self.state}"\n\n'
        self.config.write_text(head + body)
        return self.config

    def cli(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "knotify.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"knotify {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def hook(self, *args: str, timeout: float = 30,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "knotify-notify"), *args], env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)

    def send_together(self, *reports: tuple[str, str, str, str, int | None]) -> list[str]:
        """(host, kind, name, state, prio) reports in one message, as the agent sends a
        batch; returns their ids. The router takes them in at the same instant, so a test
        does not depend on how fast the machine starts one ``knotify send`` after another
        (a group window, a rule's delay)."""
        from knotify import zmtp

        now = time.time_ns()
        events = [{"v": 1, "id": uuid.uuid4().hex, "host": host, "kind": kind, "name": name,
                   "state": state, "prio": prio, "seq": i + 1, "ts_ns": now + i,
                   "source": "send"}
                  for i, (host, kind, name, state, prio) in enumerate(reports)]
        payload = json.dumps({"v": 1, "op": "events", "events": events}).encode()
        answer = json.loads(zmtp.request(f"ipc://{self.runtime}/knotify.sock", payload, 10))
        assert answer["ok"] and answer["rejected"] == [], answer
        return [str(e["id"]) for e in events]

    def history(self, limit: int = 10_000, **filters: str) -> list[dict[str, Any]]:
        extra = [x for k, v in filters.items() for x in (f"--{k}", v)]
        out = self.cli("history", "--json", "--limit", str(limit), *extra).stdout
        return list(json.loads(out))

    def status(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("status", "--json").stdout)["states"])

    def spooled(self) -> list[Path]:
        new = self.spool / "new"
        return sorted(new.glob("*.json")) if new.exists() else []


class RouterProcess:
    """``knotify run`` as a real child process, logging JSON lines to a file.

    Every line it logs must be JSON: at the end of the test that started it, any other
    line (a traceback, a warning printed by Python) fails that test
    (:func:`check_router_logs`), unless the test said it expects it (:meth:`expect_plain`).
    """

    #: The routers made in the current test, checked when it ends.
    made: ClassVar[list[RouterProcess]] = []

    def __init__(self, kenv: KEnv) -> None:
        self.kenv = kenv
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = kenv.root / "router.log"
        self._offset = 0
        #: Lines cut short by a SIGKILL in the middle of a write: not a fault of the router.
        self._torn: list[str] = []
        self._expected: list[re.Pattern[str]] = []
        RouterProcess.made.append(self)

    def expect_plain(self, pattern: str) -> None:
        """Lines matching ``pattern`` (a regex, whole line) may be in the log though not JSON
        (e.g. the one-line error ``knotify run`` prints when it refuses to start)."""
        self._expected.append(re.compile(pattern))

    def not_json(self) -> list[str]:
        """The log's lines that are not JSON objects, other than expected and torn ones."""
        bad = []
        for line in self.log_text().splitlines():
            if not line.strip() or line in self._torn:
                continue
            if any(p.fullmatch(line) for p in self._expected):
                continue
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                bad.append(line)
        return bad

    def _mark_torn(self) -> None:
        """After a SIGKILL: a last line without its newline was cut short mid-write; end it,
        so the next router's first line is not glued to it, and tolerate it."""
        if not self.log_path.exists():
            return
        with open(self.log_path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                self._torn.append(data.rsplit(b"\n", 1)[-1].decode(errors="replace"))
                fh.write(b"\n")

    def start(self, wait: bool = True, extra: list[str] | None = None) -> RouterProcess:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "knotify.cli", "run", "--log-format", "json",
             "--log-level", "debug", *(extra or [])],
            env=self.kenv.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited {self.proc.returncode}:\n{self.log_text()}")
            return any(r.get("event") == "router.started"
                       for r in self.records(since=self._offset))
        wait_for(ready, timeout, what="the router to start")

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        """JSON log records, from byte offset ``since`` of the log file."""
        out = []
        for line in self.log_text()[since:].splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._mark_torn()
            raise AssertionError(f"router did not stop within {timeout}s after {sig}") from None
        if sig == signal.SIGKILL:
            self._mark_torn()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def check_router_logs(routers: list[RouterProcess]) -> None:
    """Fail if a router logged a line that is not JSON (a traceback, say): the tests read
    its log as JSON records and would never see it. Stops the routers first."""
    for proc in routers:
        if proc in RouterProcess.made:
            RouterProcess.made.remove(proc)
        if proc.alive:
            proc.stop(signal.SIGKILL)
    problems = [(proc.log_path, bad) for proc in routers if (bad := proc.not_json())]
    if problems:
        text = "\n".join(f"{path}:\n" + "\n".join(f"  | {line}" for line in lines[:80])
                         for path, lines in problems)
        pytest.fail(f"the router logged lines that are not JSON:\n{text}", pytrace=False)


@pytest.fixture
def kenv() -> Iterator[KEnv]:
    # Short paths: an ipc socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="kn-", dir="/tmp"))
    RouterProcess.made.clear()
    try:
        yield KEnv(root)
        # Routers the test made itself (not the ``router`` fixture's), before their logs go.
        check_router_logs([p for p in RouterProcess.made if p.log_path.is_relative_to(root)])
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def router(kenv: KEnv) -> Iterator[RouterProcess]:
    """A router for ``kenv`` (not started: write the config first, then ``router.start()``).

    At teardown it is stopped, and the test fails if its log has a line that is not JSON.
    """
    proc = RouterProcess(kenv)
    try:
        yield proc
    finally:
        check_router_logs([proc])


@pytest.fixture
def cluster(kenv: KEnv, router: RouterProcess) -> Iterator[Any]:
    """Real keepalived nodes in network namespaces (tests/netns.py), to create in the test.

    Needs root, ip netns and keepalived: skipped with the reason on a laptop, a failure
    under CI. Torn down before the router (every process, every namespace); the test
    fails if a namespace is left behind.
    """
    import netns

    ok, reason = netns.usable()
    need(ok, reason)
    made = netns.Cluster(kenv.root / "ka")
    try:
        yield made
    finally:
        forced = made.destroy()
        assert not made.namespaces, \
            f"network namespaces left behind: {made.namespaces} ({forced})"


@pytest.fixture
def http() -> Iterator[Any]:
    """A local HTTP receiver for webhook alerts (alert_servers.HttpSink), stopped after."""
    from alert_servers import HttpSink

    sink = HttpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def smtp() -> Iterator[Any]:
    """A real SMTP server (aiosmtpd) for e-mail alerts (alert_servers.SmtpSink)."""
    from alert_servers import SmtpSink

    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()
