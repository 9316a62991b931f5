"""``[peers]``: the other routers of a site, and how long each router waits its turn.

Two (or more) routers hearing the same hosts page once: each waits its position x
``peer_timeout`` before sending a group's message and skips it when a peer's
notification log already covers it (:mod:`knotify.peers.gate`). Pure parsing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from knotify.schema import Table

#: Anti-entropy: a full exchange with every peer at least this often (seconds).
SYNC_INTERVAL = 2.0
#: A peer that has not answered this long is unreachable (seconds).
REQUEST_TIMEOUT = 2.0


@dataclass(slots=True, frozen=True)
class PeerRouter:
    """One other router: where it listens and the keepalived host it sits beside."""

    name: str
    endpoint: str
    host: str


@dataclass(slots=True, frozen=True)
class PeerSettings:
    #: This router's name among its peers.
    name: str
    #: The keepalived host this router sits beside (the VRRP MASTER's router goes first).
    host: str
    #: How long each position waits before it sends (seconds).
    peer_timeout: float
    #: Who goes first when no VRRP MASTER decides: every router's name, this one's too.
    order: tuple[str, ...]
    routers: tuple[PeerRouter, ...]

    def host_of(self, name: str) -> str:
        if name == self.name:
            return self.host
        return next((r.host for r in self.routers if r.name == name), name)

    @property
    def window_s(self) -> float:
        """How far apart two routers' messages about the same news may be made and
        still be the same page (the waits of every position, plus a minute of slack
        for group_wait and the cluster view's graces)."""
        return self.peer_timeout * (len(self.routers) + 1) + 60.0


def _name(t: Table, key: str, value: str) -> str:
    if not 1 <= len(value) <= 64 or any(not (c.isalnum() or c in "._-") for c in value):
        raise t.error(key, f"expected a router name (letters, digits, . _ -; at most 64), "
                      f"found {value!r}")
    return value


def parse_peers(top: Table, hook_host: str) -> PeerSettings | None:
    """``[peers]``, or None when the config has none (a router on its own)."""
    if not top.has("peers"):
        top.raw("peers")
        return None
    p = top.table("peers")
    own_host = hook_host or os.uname().nodename
    name = _name(p, "name", p.text("name", own_host))
    host = p.text("host", hook_host or name)
    peer_timeout = p.duration("peer_timeout", "15s")
    if not 0 < peer_timeout <= 3600:
        raise p.error("peer_timeout", f"expected more than 0s and at most 1h, found "
                      f"{peer_timeout:g}s")
    routers: list[PeerRouter] = []
    r = p.table("routers")
    for other in sorted(r.data):
        t = r.table(other)
        _name(r, other, other)
        if other == name:
            raise r.error(other, f"is this router's own name ([peers] name = {name!r}); "
                          "list only the other routers")
        endpoint = t.text("endpoint")
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise t.error("endpoint", f"expected tcp://HOST:PORT or ipc://PATH (the peer's "
                          f"[router] listen), found {endpoint!r}")
        routers.append(PeerRouter(other, endpoint, t.text("host", other)))
        t.done()
    r.done()
    if not routers:
        raise p.error("routers", "names no other router: add [peers.routers.NAME] with its "
                      "endpoint, or remove [peers]")
    names = [name, *(x.name for x in routers)]
    order = tuple(p.strings("order", sorted(names)))
    for who in order:
        if who not in names:
            raise p.error("order", f"names {who!r}, which is neither this router "
                          f"({name!r}) nor one of [peers.routers]")
    if len(set(order)) != len(order):
        raise p.error("order", "names a router twice")
    # Routers the order leaves out come after it, by name.
    order = order + tuple(sorted(set(names) - set(order)))
    p.done()
    return PeerSettings(name, host, peer_timeout, order, tuple(routers))
