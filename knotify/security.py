"""keepalived-style path security: what root runs or reads must be root's alone.

When the router runs as root, a program an action runs, or a file it loads, must
not be replaceable by anyone else: every component of its path (as given and
resolved) must be owned by root and not writable by group or others. Sticky
world-writable folders such as /tmp are accepted, as keepalived accepts them:
nobody but the owner can replace an entry there.
"""

from __future__ import annotations

import grp
import os
import stat


def _components(path: str) -> list[str]:
    parts = []
    current = path
    while True:
        parts.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            return list(reversed(parts))
        current = parent


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def insecure_reason(path: str) -> str | None:
    """Why someone other than root could change what ``path`` is, or None if no one can."""
    absolute = os.path.abspath(path)
    seen: set[str] = set()
    for candidate in (absolute, os.path.realpath(absolute)):
        for component in _components(candidate):
            if component in seen:
                continue
            seen.add(component)
            try:
                st = os.lstat(component)
            except OSError as exc:
                return f"{component}: {exc.strerror}"
            if stat.S_ISLNK(st.st_mode):
                continue  # the resolved path is checked too
            mode = stat.S_IMODE(st.st_mode)
            is_dir = stat.S_ISDIR(st.st_mode)
            if st.st_uid != 0:
                return f"{component} is owned by uid {st.st_uid}, not root"
            sticky = is_dir and bool(st.st_mode & stat.S_ISVTX)
            if mode & stat.S_IWOTH and not sticky:
                return f"{component} is writable by everyone (mode {mode:04o})"
            if mode & stat.S_IWGRP and st.st_gid != 0 and not sticky:
                return (f"{component} is writable by group {_group_name(st.st_gid)} "
                        f"(mode {mode:04o})")
    return None


def must_be_root_only(path: str) -> str | None:
    """The refusal message for ``path`` when this process is root, else None."""
    if os.geteuid() != 0:
        return None
    reason = insecure_reason(path)
    if reason is None:
        return None
    return f"refusing {path} while running as root: {reason}"
