"""Default locations, shared by the hook (which must stay light) and the router.

Root gets the system folders; anyone else gets per-user folders, so the embedded
default config runs on a laptop without privileges. ``KNOTIFY_RUNTIME_DIR`` and
``KNOTIFY_STATE_DIR`` override both (tests and odd layouts use them).
"""

from __future__ import annotations

import os

DEFAULT_CONFIG_NAME = "knotify.toml"
SYSTEM_CONFIG = "/etc/knotify/knotify.toml"


def runtime_dir() -> str:
    """Folder for the sockets and the router's lock."""
    env = os.environ.get("KNOTIFY_RUNTIME_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/knotify"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "knotify")
    return f"/tmp/knotify-{os.geteuid()}"


def state_dir() -> str:
    """Folder for the journal, the spool and the sequence counter."""
    env = os.environ.get("KNOTIFY_STATE_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/knotify"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(xdg, "knotify")


def control_endpoint(rundir: str) -> str:
    return "ipc://" + os.path.join(rundir, "knotify.sock")


def pub_endpoint(rundir: str) -> str:
    return "ipc://" + os.path.join(rundir, "events.sock")


def config_search_path() -> list[str]:
    """Where a config is looked for when neither ``-c`` nor ``KNOTIFY_CONFIG`` names one."""
    paths: list[str] = []
    if os.geteuid() != 0:
        xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
            os.path.expanduser("~"), ".config"
        )
        paths.append(os.path.join(xdg, "knotify", DEFAULT_CONFIG_NAME))
    paths.append(SYSTEM_CONFIG)
    return paths


def find_config(explicit: str | None) -> str | None:
    """The config file to use: explicit path, then ``KNOTIFY_CONFIG``, then the search path.

    Returns None when nothing is found, meaning "use the embedded default".
    An explicit path or ``KNOTIFY_CONFIG`` is returned even if missing, so the
    caller reports it instead of silently falling back.
    """
    if explicit:
        return explicit
    env = os.environ.get("KNOTIFY_CONFIG")
    if env:
        return env
    for path in config_search_path():
        if os.path.exists(path):
            return path
    return None
