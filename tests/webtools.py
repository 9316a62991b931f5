"""``knotify web`` as a real child process for the tests, and a plain HTTP client."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from alert_servers import free_port
from conftest import KEnv, wait_for


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> Answer:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, dict(resp.headers), resp.read().decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read().decode(errors="replace"))


class WebProcess:
    """``python -m knotify.cli web`` on a free loopback port, logging to a file."""

    def __init__(self, kenv: KEnv, *extra: str) -> None:
        self.kenv = kenv
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path: Path = kenv.root / f"web-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed right after the fork
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "knotify.cli", "web", "--listen",
                 f"127.0.0.1:{self.port}", "--log-format", "json", *extra],
                env=kenv.env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def wait_ready(self) -> WebProcess:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"knotify web exited {self.proc.returncode}:\n"
                                     f"{self.log_text()}")
            try:
                return get(self.url + "/healthz", timeout=2).status == 200
            except OSError:
                return False
        wait_for(up, 20, what="knotify web to listen")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return get(self.url + path, headers)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("knotify web did not stop on SIGTERM") from None
