"""Shared fixtures: a private knotify set-up per test, a real router process, the CLI.

Everything runs for real: the router is ``python -m knotify.cli run`` in a
subprocess, hooks are the installed ``knotify-notify`` script, the journal is a
SQLite file. Tests that need root or keepalived skip on a laptop with the reason
and fail under CI (``CI=true``), where they must run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    """``knotify run`` as a real child process, logging JSON lines to a file."""

    def __init__(self, kenv: KEnv) -> None:
        self.kenv = kenv
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = kenv.root / "router.log"
        self._offset = 0

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
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"router did not stop within {timeout}s after {sig}") from None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def kenv() -> Iterator[KEnv]:
    # Short paths: an ipc socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="kn-", dir="/tmp"))
    try:
        yield KEnv(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def router(kenv: KEnv) -> Iterator[RouterProcess]:
    """A router for ``kenv`` (not started: write the config first, then ``router.start()``)."""
    proc = RouterProcess(kenv)
    try:
        yield proc
    finally:
        if proc.alive:
            proc.stop(signal.SIGKILL)


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
