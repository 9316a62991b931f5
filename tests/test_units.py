"""The systemd units in config/: what they promise the router and the agent, and that
systemd itself accepts them (``systemd-analyze verify``, which needs no running systemd)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, ROOT, need


def _settings(unit: Path) -> dict[str, str]:
    out = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_router_unit_is_type_notify_with_a_watchdog_and_a_file_limit() -> None:
    unit = _settings(ROOT / "config" / "knotifyd.service")
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    assert unit["WatchdogSec"] == "30s"
    assert int(unit["LimitNOFILE"]) >= 65536
    assert unit["Restart"] == "on-failure"


def test_agent_unit_has_a_file_limit() -> None:
    unit = _settings(ROOT / "config" / "knotify-agent.service")
    assert int(unit["LimitNOFILE"]) >= 65536


@pytest.mark.parametrize("name", ["knotifyd.service", "knotify-agent.service"])
def test_systemd_accepts_the_unit(tmp_path: Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    need(analyze is not None, "needs systemd-analyze (Debian: systemd)")
    assert analyze is not None
    text = (ROOT / "config" / name).read_text()
    # The unit names the production path; point it at this checkout's install.
    text = text.replace("/opt/knotify/venv/bin/knotify", str(BIN / "knotify"))
    unit = tmp_path / name
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if name in line or "Unknown" in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
