"""``knotify install-hooks DIR``: wrappers for this virtualenv, the config built in.

They must be what keepalived's ``enable_script_security`` accepts (root-owned, 0755,
in folders only root can write: tests/test_web_browser.py runs real keepalived with
them), must reach the router with keepalived's bare environment, and must keep a
config path with shell metacharacters one word. The README's first command, run as
root, must not quietly take over a production journal.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import netns
import pytest
from conftest import KEnv, RouterProcess, need

from knotify import config as configmod
from knotify.commands.run import production_journal


def _root() -> None:
    need(os.geteuid() == 0, "needs root (root-owned wrappers)")


def test_wrappers_reach_the_router_from_keepalived_environment(
        kenv: KEnv, router: RouterProcess) -> None:
    _root()
    kenv.write_config("")
    router.start()
    folder = netns.secure_dir(kenv.root / "sbin")
    out = kenv.cli("install-hooks", str(folder), "-c", str(kenv.config)).stdout
    assert f"config built in: {kenv.config}" in out
    for name in ("knotify-notify", "knotify-fifo"):
        path = folder / name
        st = path.stat()
        assert st.st_uid == 0 and st.st_gid == 0 and stat.S_IMODE(st.st_mode) == 0o755
        text = path.read_text()
        assert text.startswith("#!/bin/sh\n") and sys.executable in text
        assert "/opt/knotify" not in text
    # keepalived's environment: a bare PATH, none of the test's KNOTIFY_* variables.
    proc = subprocess.run([str(folder / "knotify-notify"), "INSTANCE", "VI_1", "MASTER", "100"],
                          env=netns.KEEPALIVED_ENV, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    [event] = kenv.history()
    assert (event["name"], event["state"], event["source"]) == ("VI_1", "MASTER", "hook")
    assert not kenv.spooled()


def test_a_hostile_config_path_stays_one_word(kenv: KEnv, router: RouterProcess) -> None:
    _root()
    kenv.write_config("")
    router.start()
    odd = kenv.root / "conf $(touch PWNED) 'q\" ;x"
    odd.mkdir()
    cfg = odd / "k.toml"
    cfg.write_text(kenv.config.read_text())
    folder = netns.secure_dir(kenv.root / "sbin")
    kenv.cli("install-hooks", str(folder), "-c", str(cfg))
    proc = subprocess.run([str(folder / "knotify-notify"), "INSTANCE", "VI_2", "BACKUP", "50"],
                          env=netns.KEEPALIVED_ENV, capture_output=True, text=True, timeout=30,
                          cwd=str(kenv.root))
    assert proc.returncode == 0, proc.stderr
    assert [e["name"] for e in kenv.history()] == ["VI_2"]
    assert not list(kenv.root.rglob("PWNED"))


def test_refuses_a_folder_keepalived_would_refuse(kenv: KEnv) -> None:
    _root()
    open_dir = kenv.root / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # world-writable, not sticky
    proc = kenv.cli("install-hooks", str(open_dir / "sbin"), check=False)
    assert proc.returncode == 1
    assert "writable by everyone" in proc.stderr and "keepalived" in proc.stderr
    assert not (open_dir / "sbin" / "knotify-notify").exists()
    theirs = kenv.root / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    proc = kenv.cli("install-hooks", str(theirs), check=False)
    assert proc.returncode == 1 and "owned by uid 65534" in proc.stderr


def test_needs_a_config_or_says_so(kenv: KEnv) -> None:
    env = dict(kenv.env)
    env.pop("KNOTIFY_CONFIG")
    missing = kenv.root / "nope.toml"
    proc = subprocess.run([sys.executable, "-m", "knotify.cli", "install-hooks",
                           str(kenv.root / "sbin"), "-c", str(missing)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{missing} does not exist" in proc.stderr


@pytest.mark.parametrize(("euid", "env", "exists", "refused"), [
    (0, {}, True, True), (0, {}, False, False), (1000, {}, True, False),
    (0, {"KNOTIFY_STATE_DIR": "/srv/k"}, True, False)])
def test_first_command_as_root_does_not_take_a_production_journal(
        tmp_path: Path, euid: int, env: dict[str, str], exists: bool, refused: bool) -> None:
    config = configmod.load(None)
    assert config.path == configmod.EMBEDDED
    config = dataclasses.replace(config, journal=str(tmp_path / "journal.db"))
    if exists:
        Path(config.journal).write_bytes(b"")
    reason = production_journal(config, euid=euid, env=env)
    assert (reason is not None) == refused
    if reason:
        assert config.journal in reason and "-c" in reason and "KNOTIFY_STATE_DIR" in reason


def test_a_real_config_is_used_as_given(kenv: KEnv) -> None:
    config = configmod.load(str(kenv.write_config("")))
    Path(config.journal).parent.mkdir(parents=True)
    Path(config.journal).write_bytes(b"")
    assert production_journal(config, euid=0, env={}) is None
