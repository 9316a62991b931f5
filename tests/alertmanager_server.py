"""A real Prometheus Alertmanager for the tests (Debian's ``prometheus-alertmanager``).

Started on 127.0.0.1 with a free port, a temporary config and storage folder, and
gossip off (``--cluster.listen-address=``); its API v2 is what the tests read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from alert_servers import free_port

BINARIES = ("prometheus-alertmanager", "alertmanager")

CONFIG = """\
route:
  receiver: "none"
  group_wait: 1h
receivers:
  - name: "none"
"""


def binary() -> str | None:
    return next((found for name in BINARIES if (found := shutil.which(name))), None)


class Alertmanager:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "alertmanager.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Alertmanager:
        exe = binary()
        assert exe is not None
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "alertmanager.yml").write_text(CONFIG)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, f"--config.file={self.root / 'alertmanager.yml'}",
                 f"--storage.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--cluster.listen-address=", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"alertmanager exited {self.proc.returncode}:\n"
                                     + self.log.read_text(errors="replace"))
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("alertmanager did not get ready:\n"
                                     + self.log.read_text(errors="replace"))
            time.sleep(0.1)

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: the alerts it holds that have not ended."""
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=10) as r:
            return list(json.loads(r.read()))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
