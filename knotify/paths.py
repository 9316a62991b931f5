"""Default locations, shared by the hook (which must stay light) and the router.

Root gets the system folders; anyone else gets per-user folders, so the embedded
default config runs on a laptop without privileges. ``KNOTIFY_RUNTIME_DIR`` and
``KNOTIFY_STATE_DIR`` override both (tests and odd layouts use them).
"""

from __future__ import annotations

import os
import stat  # (already loaded by os: free for the hook)

DEFAULT_CONFIG_NAME = "knotify.toml"
SYSTEM_CONFIG = "/etc/knotify/knotify.toml"
#: A config is a small text file; anything bigger is refused unread.
MAX_CONFIG = 1 << 20


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


def read_config(path: str) -> str:
    """The text of a config file, or ValueError saying in a few words why it cannot be
    read: never blocks on a FIFO, never reads a device or more than :data:`MAX_CONFIG`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            from knotify.spool import what_is

            raise ValueError(f"cannot read: not a regular file ({what_is(st.st_mode)})")
        if st.st_size > MAX_CONFIG:
            raise ValueError(f"cannot read: {st.st_size} bytes, over the {MAX_CONFIG} a "
                             "config may have")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, MAX_CONFIG + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG:
                raise ValueError(f"cannot read: over the {MAX_CONFIG} bytes a config may have")
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc})") from None
