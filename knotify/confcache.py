"""The client's part of the config, parsed with tomllib once per change of the file.

keepalived forks the hook for every event, and ``import tomllib`` (re, typing, datetime,
string) costs about as much as starting the interpreter. So the ``[paths]`` and ``[hook]``
tables the clients read are kept, after a parse, in ``STATE_DIR/client-config.cache``
(:mod:`marshal`, free to import) under the config file's identity (path, device, inode,
size, change times); a later call whose config is still that file reads them back.

The cache is as trusted as the config itself only if no one else can have written it:
it is used only when it is a regular file owned by this user, written by no one else,
and it is written without following links (a new file, renamed into place). A config
changed within the last two seconds is not cached: a same-size rewrite within one
timestamp tick would not change its identity.
"""

from __future__ import annotations

import marshal
import os
import stat
import time

from knotify import paths

#: What the clients read; the rest of the config is the router's.
TABLES = ("paths", "hook")
NAME = "client-config.cache"
_FORMAT = 1
#: A config changed more recently than this (ns) is not cached yet.
FRESH_NS = 2_000_000_000


def tables(config_path: str) -> dict[str, object]:
    """The config's client tables; ValueError (with the reason) if it cannot be read as TOML."""
    try:
        st = os.stat(config_path)
        identity = (_FORMAT, os.path.abspath(config_path), st.st_dev, st.st_ino, st.st_size,
                    st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        identity = None  # read_config says why
    cache = os.path.join(paths.state_dir(), NAME)
    if identity is not None:
        found = _load(cache)
        if isinstance(found, tuple) and len(found) == 2 and found[0] == identity:
            data = found[1]
            if isinstance(data, dict):
                return data
    text = paths.read_config(config_path)
    import tomllib

    data = {name: value for name, value in tomllib.loads(text).items() if name in TABLES}
    if identity is not None and time.time_ns() - max(identity[5], identity[6]) > FRESH_NS:
        _store(cache, identity, data)
    return data


def _load(path: str) -> object:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_size > paths.MAX_CONFIG):
            return None
        return marshal.loads(os.read(fd, paths.MAX_CONFIG))
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)


def _store(path: str, identity: tuple[int | str, ...], data: dict[str, object]) -> None:
    """Best effort: a folder we may not write to, or a value marshal cannot hold
    (a TOML date), just means no cache."""
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f".{NAME}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        blob = marshal.dumps((identity, data))  # ValueError for what it cannot hold
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except (OSError, ValueError):
        return
    try:
        try:
            os.write(fd, blob)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
