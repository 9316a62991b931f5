"""The router's sockets: where events and requests come in, and where it publishes.

:class:`Endpoints` binds the control socket and ``[router] listen`` (CURVE and its ZAP
handler when configured), keeps the authorised client keys current and reads each
socket in batches (:meth:`Endpoints.serve`), handing every batch to the intake.
:class:`Publisher` is the XPUB socket ``knotify watch`` and other consumers follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from knotify import transport
from knotify.errors import RouterError
from knotify.event import encode, reply
from knotify.trust import PLAIN_TCP, KeyRing, Peer, ZapHandler

if TYPE_CHECKING:
    from knotify.config import Config, CurveKeys
    from knotify.supervisor import Faults, Supervisor

#: What one event-loop turn reads from a socket at most: messages, events (estimated from
#: the payload, exact for hooks) and bytes, whichever comes first. The work of a turn
#: is bounded by these, whatever the senders do.
MAX_BATCH = 2000
MAX_BATCH_EVENTS = 2000
MAX_BATCH_BYTES = 1024 * 1024
#: Messages libzmq queues per connection (see bind).
RCVHWM = 1000
#: How often the clients folder is looked at, and re-read even if it looks the same.
CLIENTS_CHECK = 1.0
CLIENTS_REREAD = 10.0
ZAP_DOMAIN = "knotify"
#: A socket loop is overdue when messages wait and it has not turned for this long.
SERVE_TURN = 1.0
SUBSCRIPTIONS_EVERY = 0.1
NOBLOCK = int(zmq.NOBLOCK)
RCVMORE = int(zmq.RCVMORE)
SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

#: Decodes, journals and answers one batch: (socket, messages, who sent each or None).
Handler = Callable[["zmq.Socket[bytes]", list[list[bytes]], "list[Peer | None] | None"],
                   None]


@dataclass(slots=True, frozen=True)
class SocketSettings:
    control: str
    listen: tuple[str, ...]
    pub: str
    curve: CurveKeys | None
    max_message: int
    handshake_timeout: float
    group: str | None

    @classmethod
    def of(cls, config: Config) -> SocketSettings:
        return cls(config.control_endpoint, config.listen, config.pub_endpoint,
                   config.curve, config.max_message, config.handshake_timeout, config.group)


def nothing_waiting(sock: zmq.asyncio.Socket) -> bool:
    """Whether nothing waits to be read: a socket loop with nothing to do is not stuck."""
    try:
        return not int(sock.get(zmq.EVENTS)) & zmq.POLLIN
    except zmq.ZMQError:
        return False


def answer_all(sock: zmq.Socket[bytes], batch: list[list[bytes]], error: str) -> None:
    answer = reply(False, error=error)
    for frames in batch:
        with contextlib.suppress(zmq.ZMQError):
            for frame in frames[:-1]:
                sock.send(frame, SNDMORE_NOBLOCK)
            sock.send(answer, NOBLOCK)


class Publisher:
    """An XPUB socket: a PUB that tells who subscribed, so nothing is encoded for nobody."""

    def __init__(self) -> None:
        self.sock: zmq.Socket[bytes] | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._subscriptions: set[bytes] = set()
        self._checked = 0.0
        self._path = ""

    def bind(self, endpoint: str, own: Callable[[str, int], None], mode: int) -> None:
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        self._path = path = endpoint[len("ipc://"):]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock.bind(endpoint)
        own(path, mode)

    def watched(self) -> bool:
        """Whether anyone subscribes (so that messages are worth making)."""
        if self.sock is None:
            return False
        now = time.monotonic()
        if now - self._checked > SUBSCRIPTIONS_EVERY:
            self._checked = now
            self._read_subscriptions(self.sock)
        return bool(self._subscriptions)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        if not self.watched():
            return
        assert self.sock is not None
        with contextlib.suppress(zmq.ZMQError):
            self.sock.send_multipart([topic.encode(), encode(data)], flags=zmq.NOBLOCK)

    def _read_subscriptions(self, sock: zmq.Socket[bytes]) -> None:
        """XPUB passes on the first subscribe and last unsubscribe of each topic prefix."""
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            if msg[:1] == b"\x01":
                self._subscriptions.add(msg[1:])
            elif msg[:1] == b"\x00":
                self._subscriptions.discard(msg[1:])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        if self._path:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


class Endpoints:
    """The ROUTER sockets events and requests come in on, and who may use them."""

    def __init__(self, settings: SocketSettings, log: Any, faults: Faults,
                 own: Callable[[str, int], None]) -> None:
        self.settings = settings
        self.log = log
        self.faults = faults
        self.own = own
        self.ctx = zmq.asyncio.Context()
        self.sockets: list[zmq.asyncio.Socket] = []
        #: Per socket (as in ``sockets``): who its senders are: "local", "curve", "plain".
        self.trust: list[str] = []
        self.keyring: KeyRing | None = None
        self.zap: ZapHandler | None = None
        self._clients_mark: tuple[int, int] | None = None
        self._clients_read = 0.0

    @property
    def names(self) -> list[str]:
        return [self.settings.control, *self.settings.listen]

    @property
    def refused(self) -> int:
        """Connections refused for an unknown key."""
        return self.zap.refused if self.zap is not None else 0

    def bind(self) -> None:
        s = self.settings
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s.control[len("ipc://"):])  # stale: no live router (we hold the lock)
        curve = s.curve
        if curve is not None and any(e.startswith("tcp://") for e in s.listen):
            public, secret = transport.load_secret(curve.secret_key)
            self.keyring = KeyRing(curve.clients, curve.admins, curve.hosts)
            self.keyring.load()
            self.zap = ZapHandler(self.ctx, self.keyring, ZAP_DOMAIN, self.log)
            self.watch_clients()
            self.log.info("curve.enabled", clients=self.keyring.names(), keys=curve.clients,
                          admins=sorted(curve.admins) or None)
        for endpoint in self.names:
            sock = self.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, s.max_message)
            # Messages queued per connection before libzmq stops reading it (TCP pushes
            # back): a hook sends one, the agent one at a time, a fast sender a window.
            sock.setsockopt(zmq.RCVHWM, RCVHWM)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            # A connection that has not finished its handshake (CURVE included) in time
            # is closed: idle connections cannot pile up before authentication (a hook
            # finishes it at once; the control socket is guarded by its folder, still).
            sock.setsockopt(zmq.HANDSHAKE_IVL, int(s.handshake_timeout * 1000))
            if endpoint.startswith("tcp://"):
                # Keepalive probes close connections whose peer vanished.
                sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
                sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 60)
                sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
                sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
                if curve is not None:
                    sock.curve_server = True
                    sock.curve_publickey = public
                    sock.curve_secretkey = secret
                    sock.zap_domain = ZAP_DOMAIN.encode()
                    # No ZAP handler (it died): refuse, never let everyone in.
                    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
                else:
                    self.log.warning("tcp.insecure", endpoint=endpoint,
                                     reason="insecure = true: anyone who reaches it can send")
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                sock.close()
                raise RouterError(f"cannot bind {endpoint}: {exc}") from None
            if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
                self.own(endpoint[len("ipc://"):], 0o660 if s.group else 0o600)
            self.sockets.append(sock)
            self.trust.append("local" if endpoint.startswith("ipc://")
                              else "curve" if curve is not None else "plain")

    def start(self, sup: Supervisor, handle: Handler, stopping: Callable[[], bool]) -> None:
        """Each socket's read loop (handing batches to ``handle``), the ZAP handler and
        the key folder's watch, under the supervisor."""
        for endpoint, sock, trust in zip(self.names, self.sockets, self.trust, strict=True):
            name = f"serve {endpoint}"
            sup.spawn(name, functools.partial(self.serve, sock, name, trust, handle,
                                              sup.beater(name), stopping),
                      SERVE_TURN, idle=functools.partial(nothing_waiting, sock))
        if self.zap is not None:
            self.zap.beat = sup.beater("zap")
            sup.spawn("zap", self.zap.run, 1.0)
            sup.every("keys", CLIENTS_CHECK, self.watch_clients)

    def apply(self, curve: CurveKeys | None) -> None:
        """A reload: roles (admins, hosts) apply at once; new keys in the folder too."""
        old = self.settings.curve
        self.settings = SocketSettings(self.settings.control, self.settings.listen,
                                       self.settings.pub, curve, self.settings.max_message,
                                       self.settings.handshake_timeout, self.settings.group)
        if self.keyring is not None and curve is not None and curve is not old:
            self.keyring.configure(curve.admins, curve.hosts)
            self.watch_clients(force=True)

    def watch_clients(self, force: bool = False) -> None:
        """Re-read the authorised client keys when their folder changes (and every
        CLIENTS_REREAD seconds, for a key file rewritten in place)."""
        curve = self.settings.curve
        if self.keyring is None or curve is None:
            return
        try:
            st = os.stat(curve.clients)
            mark = (st.st_mtime_ns, st.st_ino)
        except OSError:
            mark = (0, 0)
        now = time.monotonic()
        if force or mark != self._clients_mark or now - self._clients_read > CLIENTS_REREAD:
            self._clients_mark, self._clients_read = mark, now
            if self.keyring.load():
                self.log.info("curve.clients_changed", clients=self.keyring.names(),
                              detail="messages of removed keys are refused from now on, "
                              "on open connections too")

    async def serve(self, sock: zmq.asyncio.Socket, name: str, trust: str, handle: Handler,
                    beat: Callable[[], None], stopping: Callable[[], bool]) -> None:
        """Read ``sock`` in batches and hand each to ``handle``, for ever."""
        # The same socket without asyncio's futures, to drain and answer a batch cheaply.
        raw: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        recv, more = raw.recv, raw.get
        keyed = trust == "curve"  # each message says which client key sent it
        while True:
            beat()
            try:
                first: list[Any] = await sock.recv_multipart(copy=not keyed)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM or stopping():
                    return
                self.log.warning("socket.recv_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            peers: list[Peer | None] | None = None if trust == "local" else []
            batch: list[list[bytes]] = []
            frames: list[Any] = first
            events = size = 0
            # (recv_multipart, but with int flags: cheaper)
            while True:
                if peers is not None:
                    if keyed:
                        peers.append(self._peer(frames[-1]))
                        frames = [f.bytes for f in frames]
                    else:
                        peers.append(PLAIN_TCP)
                batch.append(frames)
                payload = frames[-1]
                size += len(payload)
                events += payload.count(b'"id"') or 1
                if (len(batch) >= MAX_BATCH or events >= MAX_BATCH_EVENTS
                        or size >= MAX_BATCH_BYTES):
                    break
                try:
                    frames = [recv(NOBLOCK, copy=not keyed)]
                    while more(RCVMORE):
                        frames.append(recv(NOBLOCK, copy=not keyed))
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    self.log.warning("socket.recv_failed", error=str(exc))
                    break
            try:
                handle(raw, batch, peers)
            except Exception as exc:
                # A bug in the handling of one batch: its peers get an answer (so a hook
                # spools at once), the next batch is handled as usual.
                reason = self.faults.record("batch", exc, endpoint=name, messages=len(batch))
                answer_all(raw, batch, f"internal error: {reason}")
            await asyncio.sleep(0)  # let actions and other sockets have a turn

    def _peer(self, frame: zmq.Frame) -> Peer | None:
        """Who sent a message on a CURVE socket: its key, checked against the key ring
        now (None: the key was removed since the connection was made)."""
        if self.keyring is None:
            return None
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            return None
        return self.keyring.peer(user) if isinstance(user, str) else None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        if self.zap is not None:
            self.zap.close()
        self.ctx.term()
        with contextlib.suppress(OSError):
            os.unlink(self.settings.control[len("ipc://"):])
