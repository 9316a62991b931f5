"""The clients' config tables, parsed with tomllib once per change of the file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import need

from knotify import client, confcache

CONFIG = '[paths]\nstate_dir = "/s"\n[hook]\nack_timeout = "2s"\nhost = "kb1"\n[log]\nlevel = "x"\n'


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state folder; in this process a config is cacheable as soon as it is written."""
    folder = tmp_path / "state"
    folder.mkdir()
    monkeypatch.setenv("KNOTIFY_STATE_DIR", str(folder))
    monkeypatch.setattr(confcache, "FRESH_NS", 0)
    return folder


def aged(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def read_in_a_new_process(config: Path, state: Path) -> tuple[str, bool]:
    """(the hook's host, whether tomllib was imported) as a new hook process sees them."""
    code = ("import sys; from knotify import client; "
            f"s = client.load_settings({str(config)!r}); "
            "print(s.host, 'tomllib' in sys.modules)")
    env = dict(os.environ, KNOTIFY_STATE_DIR=str(state))
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True, env=env, timeout=60).stdout.split()
    return out[0], out[1] == "True"


def test_the_second_read_of_an_unchanged_config_needs_no_toml_parser(
    tmp_path: Path, state: Path
) -> None:
    config = aged(tmp_path / "k.toml", CONFIG)
    # A new process waits FRESH_NS after the last change (mtime and ctime) before caching.
    time.sleep(max(0.0, (config.stat().st_ctime_ns + 2_100_000_000 - time.time_ns()) / 1e9))
    assert read_in_a_new_process(config, state) == ("kb1", True)
    assert read_in_a_new_process(config, state) == ("kb1", False)
    # Only what the clients read is kept.
    assert confcache.tables(str(config)) == {"paths": {"state_dir": "/s"},
                                             "hook": {"ack_timeout": "2s", "host": "kb1"}}
    assert (state / confcache.NAME).stat().st_mode & 0o777 == 0o600


def test_a_changed_config_is_read_again_even_at_the_same_size_and_mtime(
    tmp_path: Path, state: Path
) -> None:
    config = aged(tmp_path / "k.toml", CONFIG)
    assert client.load_settings(str(config)).host == "kb1"
    before = config.stat()
    config.write_text(CONFIG.replace("kb1", "kb2"))  # same size, same inode
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))  # even the same mtime
    assert client.load_settings(str(config)).host == "kb2"  # (its ctime moved)
    replaced = aged(tmp_path / "new.toml", CONFIG.replace("kb1", "kb3"))
    replaced.rename(config)  # an editor's save: a new file in its place
    assert client.load_settings(str(config)).host == "kb3"


def test_a_config_being_edited_right_now_is_not_cached(
    tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(confcache, "FRESH_NS", 2_000_000_000)
    config = tmp_path / "k.toml"
    config.write_text(CONFIG)
    assert client.load_settings(str(config)).host == "kb1"
    assert not (state / confcache.NAME).exists()


def test_a_cache_someone_else_could_have_written_is_not_believed(
    tmp_path: Path, state: Path
) -> None:
    config = aged(tmp_path / "k.toml", CONFIG)
    cache = state / confcache.NAME
    confcache.tables(str(config))
    good = cache.read_bytes()
    forged = good.replace(b"kb1", b"evl")
    assert forged != good
    cache.write_bytes(forged)
    assert client.load_settings(str(config)).host == "evl"  # (ours: believed)
    for spoil in ("group-writable", "other owner", "a link"):
        cache.unlink()
        if spoil == "a link":
            elsewhere = tmp_path / "elsewhere"
            elsewhere.write_bytes(forged)
            cache.symlink_to(elsewhere)
        else:
            cache.write_bytes(forged)
        if spoil == "group-writable":
            cache.chmod(0o620)
        elif spoil == "other owner":
            need(os.geteuid() == 0, "changing a file's owner needs root")
            os.chown(cache, 65534, -1)
        assert client.load_settings(str(config)).host == "kb1", spoil
        # ... and the next read finds a good cache put in its place, not the spoiled one.
        assert not cache.is_symlink() and cache.stat().st_uid == os.geteuid()
        assert confcache.tables(str(config))["hook"] == {"ack_timeout": "2s", "host": "kb1"}


@pytest.mark.parametrize("junk", [b"", b"\x00garbage", b"\xe9" * 100])
def test_a_damaged_cache_is_ignored_and_replaced(tmp_path: Path, state: Path, junk: bytes) -> None:
    config = aged(tmp_path / "k.toml", CONFIG)
    cache = state / confcache.NAME
    cache.write_bytes(junk)
    cache.chmod(0o600)
    assert client.load_settings(str(config)).host == "kb1"
    assert cache.read_bytes() != junk


def test_what_marshal_cannot_hold_is_read_every_time_and_broken_configs_never_cached(
    tmp_path: Path, state: Path
) -> None:
    dated = aged(tmp_path / "d.toml", '[hook]\nhost = "kb1"\nsince = 1979-05-27T07:32:00Z\n')
    assert client.load_settings(str(dated)).host == "kb1"
    assert not (state / confcache.NAME).exists()
    broken = aged(tmp_path / "b.toml", "[hook\n")
    settings = client.load_settings(str(broken))
    assert settings.config_error and "using defaults" in settings.problems[0]
    assert not (state / confcache.NAME).exists()


def test_no_state_folder_means_no_cache_and_no_error(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNOTIFY_STATE_DIR", str(tmp_path / "missing"))
    config = aged(tmp_path / "k.toml", CONFIG)
    settings = client.load_settings(str(config))
    assert (settings.host, settings.problems) == ("kb1", [])
    assert not (tmp_path / "missing").exists()
