"""One peer router as this router sees it: how to reach it, whether it answers, and
how far each side has had the other's changes (the replication watermarks)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from knotify.peers.settings import PeerRouter
from knotify.transport import ClientCurve


@dataclass(slots=True)
class Link:
    router: PeerRouter
    #: None until the first exchange ends; then whether the last one got an answer.
    up: bool | None = None
    last_ok_ns: int = 0
    last_try_ns: int = 0
    last_error: str = ""
    #: Our changes the peer has (nflog, silences), and its changes we have.
    sent: dict[str, int] = field(default_factory=lambda: {"nflog": 0, "silences": 0})
    got: dict[str, int] = field(default_factory=lambda: {"nflog": 0, "silences": 0})
    #: Exchanges by result ("ok", "timeout", "refused", "error").
    results: dict[str, int] = field(default_factory=dict)
    #: Rows merged from this peer (nflog, silences).
    merged: dict[str, int] = field(default_factory=lambda: {"nflog": 0, "silences": 0})
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.router.name

    def note(self, result: str, now_ns: int, error: str = "") -> bool:
        """Count an exchange; whether the peer's reachability changed."""
        self.results[result] = self.results.get(result, 0) + 1
        self.last_try_ns = now_ns
        was = self.up
        self.up = result == "ok"
        if self.up:
            self.last_ok_ns = now_ns
            self.last_error = ""
        else:
            self.last_error = error
        return was != self.up

    def reachable(self) -> bool:
        """Whether to wait for it: not known to be unreachable."""
        return self.up is not False

    def info(self, now_ns: int) -> dict[str, object]:
        return {"name": self.name, "endpoint": self.router.endpoint, "host": self.router.host,
                "up": self.up,
                "last_sync_s": round((now_ns - self.last_ok_ns) / 1e9, 3)
                if self.last_ok_ns else None,
                "last_error": self.last_error or None, "sent": dict(self.sent),
                "got": dict(self.got), "merged": dict(self.merged),
                "sync": dict(self.results)}


async def request(ctx: zmq.asyncio.Context, endpoint: str, payload: bytes, timeout: float,
                  curve: ClientCurve | None) -> bytes:
    """One request to a peer router on a fresh socket; TimeoutError if no answer (down,
    cut off, or this router's key is not authorised there)."""
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if curve is not None:
            sock.curve_serverkey = curve.server_public
            sock.curve_publickey = curve.public
            sock.curve_secretkey = curve.secret
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(sock.send(payload), timeout)
        except TimeoutError:
            raise TimeoutError(f"cannot connect to {endpoint} in {timeout:g}s") from None
        try:
            frames = await asyncio.wait_for(sock.recv_multipart(),
                                            max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            raise TimeoutError(f"no answer from {endpoint} in {timeout:g}s") from None
        return bytes(frames[-1])
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.close(linger=0)
