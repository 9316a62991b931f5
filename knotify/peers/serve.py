"""The server side of ``peer_sync``: merge what a peer router sent, answer what it has
not had yet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from knotify.errors import WireError

if TYPE_CHECKING:
    from knotify.alerts.silence import SilenceStore
    from knotify.peers.link import Link
    from knotify.store.nflog import NotificationLog


class Replica(Protocol):
    """What answering a peer needs of :class:`knotify.peers.service.Peers`."""

    links: dict[str, Link]
    served: int
    nflog: NotificationLog
    silences: SilenceStore
    clock: Callable[[], int]

    @property
    def me(self) -> str: ...
    def merge(self, link: Link, data: Mapping[str, Any]) -> int: ...
    def relay(self, source: str) -> None: ...
    def rows_after(self, after: Mapping[str, int], now_ns: int
                   ) -> tuple[dict[str, Any], dict[str, int], bool]: ...


def peer_sync(peers: Replica, op: str, msg: dict[str, Any]) -> dict[str, Any]:
    """Answer a peer's ``peer_sync``: merge what it sent, send what it has not had."""
    if op != "peer_sync":
        raise WireError(f"unknown op {op[:40]!r}")
    who = msg.get("from")
    link = peers.links.get(who) if isinstance(who, str) else None
    if link is None:
        raise WireError(f"peer_sync from {str(who)[:64]!r}, which is not in this "
                        f"router's [peers.routers] ({', '.join(peers.links)})")
    want = msg.get("want")
    if (not isinstance(want, dict) or type(want.get("nflog")) is not int
            or type(want.get("silences")) is not int
            or not (0 <= want["nflog"] < 2**63 and 0 <= want["silences"] < 2**63)):
        raise WireError("peer_sync 'want' must hold the nflog and silences change numbers")
    try:
        merged = peers.merge(link, msg)
    except ValueError as exc:
        raise WireError(f"peer_sync from {link.name}: {exc}") from None
    peers.served += 1
    if merged:
        peers.relay(link.name)
    now = peers.clock()
    # A peer that had more than this journal holds heard from another journal (this
    # one was made anew): it gets everything.
    after = {"nflog": int(want["nflog"]), "silences": int(want["silences"])}
    if after["nflog"] > peers.nflog.last_change():
        after["nflog"] = 0
    if after["silences"] > peers.silences.rows.last_change():
        after["silences"] = 0
    body, upto, more = peers.rows_after(after, now)
    return {"name": peers.me, **body, "upto": upto, "more": more}
