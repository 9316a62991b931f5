"""Who may do what: CURVE client keys, the host names they may send as, admin keys.

The router admits a TCP client whose public key is in ``[router.curve] clients``
(``NAME.key``); libzmq asks :class:`ZapHandler` during the CURVE handshake and stamps
every message of the connection with the key (its ZAP User-Id). The router checks that
key **per message** against the current :class:`KeyRing`, so removing a key file
refuses the connection's next message as soon as the folder is re-read (every second),
not only its next connection.

What a message may do depends on where it came from (:class:`Peer`):

* the control socket, and ``ipc://`` endpoints in ``[router] listen``: anything (the
  folder's permissions decide who gets there);
* a CURVE key: events and heartbeats **as its own hosts** (the key's name, or
  ``[router.curve.hosts]``), the ops open to any sender (``ping``), and the ops about
  one host (``history``) for one of its hosts; everything else (reload, silences,
  forget-peer, status, other hosts' history) only if the key is named in
  ``[router.curve] admins``;
* plain TCP (``insecure = true``): events and heartbeats for any host, the ops open to
  any sender; nothing else.

Each op says who may use it (its ``access``, :data:`knotify.vocab.OP_ACCESS`:
:data:`~knotify.vocab.ADMINS_ONLY` unless it says otherwise, see :mod:`knotify.ops`);
:meth:`Peer.refuse_op` applies that to the sender.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils import z85

from knotify.vocab import ANY_SENDER, OWN_HOSTS

#: libzmq's well-known ZAP endpoint (RFC 27).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: Connections refused for an unknown key are logged at most this often (and counted).
REFUSED_LOG_EVERY = 10.0


@dataclass(slots=True, frozen=True)
class Peer:
    """Who sent a message, and what that allows."""

    #: The key's name (``lb1`` for ``lb1.key``); "" for a local or plain-TCP sender.
    key: str = ""
    local: bool = False
    admin: bool = False
    #: Host names it may send as; None: any.
    hosts: frozenset[str] | None = None

    def may_send_as(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts

    def refuse_host(self, host: str) -> str | None:
        """Why this peer may not send as ``host``, or None."""
        if self.may_send_as(host):
            return None
        allowed = ", ".join(sorted(self.hosts or ()))
        return (f"client key {self.key!r} may not send as host {host[:80]!r} (it may send "
                f"as: {allowed}; see [router.curve.hosts])")

    def refuse_op(self, op: str, access: str, msg: dict[str, Any]) -> str | None:
        """Why this peer may not use ``op``, whose ``access`` (:data:`~knotify.vocab.OP_ACCESS`)
        says who may, or None."""
        if self.local or self.admin or access == ANY_SENDER:
            return None
        own = access == OWN_HOSTS
        if own and self.key and isinstance(msg.get("host"), str) \
                and self.may_send_as(msg["host"]):
            return None  # about one of its own hosts
        who = f"client key {self.key!r}" if self.key else "a plain-TCP sender"
        what = (f"{op[:40]} of other hosts (ask with host = one of yours)" if own
                else f"{op[:40]!r}")
        return (f"{who} may not use {what}: only the local control socket or a key in "
                "[router.curve] admins may")


LOCAL = Peer(local=True)
PLAIN_TCP = Peer()


class KeyRing:
    """The authorised client keys (z85 public key -> name) and what each may do."""

    def __init__(self, folder: str, admins: tuple[str, ...] = (),
                 hosts: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> None:
        self.folder = folder
        self.keys: dict[str, str] = {}
        self._peers: dict[str, Peer] = {}
        self.configure(admins, hosts)

    def configure(self, admins: tuple[str, ...],
                  hosts: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        """Roles from the config (applied on reload)."""
        self.admins = frozenset(admins)
        self.hosts = dict(hosts)
        self._peers = {}

    def load(self) -> bool:
        """Read the folder again; whether the set of keys changed."""
        keys: dict[str, str] = {}
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            names = []
        for name in names:
            if not name.endswith(".key"):
                continue
            try:
                public, _ = zmq.auth.load_certificate(os.path.join(self.folder, name))
            except (OSError, ValueError):
                continue  # not a key file: it authorises no one
            if public:
                keys[public.decode("ascii")] = name[:-4]
        changed = keys != self.keys
        self.keys = keys
        return changed

    def names(self) -> list[str]:
        return sorted(self.keys.values())

    def peer(self, user_id: str) -> Peer | None:
        """The peer for a message's ZAP User-Id (a z85 key), or None if no longer authorised."""
        name = self.keys.get(user_id)
        if name is None:
            return None
        peer = self._peers.get(name)
        if peer is None:
            allowed = self.hosts.get(name, (name,))
            peer = Peer(key=name, admin=name in self.admins,
                        hosts=None if "*" in allowed else frozenset(allowed))
            self._peers[name] = peer
        return peer

    def allows(self, public_key: bytes) -> bool:
        return z85.encode(public_key).decode("ascii") in self.keys


class ZapHandler:
    """Answers libzmq's ZAP requests (RFC 27) from the key ring; run under the supervisor."""

    def __init__(self, ctx: zmq.asyncio.Context, ring: KeyRing, domain: str,
                 log: Any, beat: Callable[[], None] = lambda: None) -> None:
        self.ring = ring
        self.domain = domain.encode()
        self.log = log
        self.beat = beat
        self.refused = 0
        self._logged = -REFUSED_LOG_EVERY
        self._quiet = 0
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request."""
        if len(request) < 6:
            return [b"1.0", b"", b"500", b"malformed request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if version != b"1.0":
            return [b"1.0", request_id, b"500", b"version not supported", b"", b""]
        if domain != self.domain or mechanism != b"CURVE" or len(credentials) != 1 \
                or len(credentials[0]) != 32:
            self.refused += 1
            return [version, request_id, b"400", b"not allowed", b"", b""]
        user_id = z85.encode(credentials[0])
        if user_id.decode("ascii") not in self.ring.keys:
            self.refused += 1
            now = time.monotonic()
            if now - self._logged >= REFUSED_LOG_EVERY:  # a stranger's storm: one line
                self.log.info("curve.refused", address=address.decode("ascii", "replace"),
                              key=user_id.decode("ascii"), reason="unknown client key",
                              refused_since_last_line=self._quiet or None)
                self._logged, self._quiet = now, 0
            else:
                self._quiet += 1
            return [version, request_id, b"400", b"unknown key", b"", b""]
        return [version, request_id, b"200", b"OK", user_id, b""]

    async def run(self) -> None:
        while True:
            self.beat()
            if not await self.sock.poll(1000):
                continue
            request = await self.sock.recv_multipart()
            try:
                answer = self.answer(request)
            except Exception:  # never leave libzmq waiting: refuse, and let it show
                answer = [b"1.0", request[1] if len(request) > 1 else b"", b"500",
                          b"internal error", b"", b""]
                raise
            finally:
                await self.sock.send_multipart(answer)

    def close(self) -> None:
        self.sock.close(linger=0)
