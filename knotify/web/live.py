"""Live updates: the router's PUB socket, fanned out to the browsers as server-sent events.

One SUB socket per web process. It subscribes only while at least one page listens:
the router publishes only to subscribers (XPUB), so a web process nobody looks at
costs the router nothing. The router's PUB socket never blocks (a slow reader loses
messages), and here each page has a small queue: when it is full, messages for that
page are skipped, which is harmless, since any message only tells the page to
fetch its fresh picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import zmq
import zmq.asyncio

TOPICS = (b"event", b"action", b"alert")
QUEUE = 64
#: What a page is told about a message (never output, details or URLs).
FIELDS = ("host", "kind", "name", "state", "effective", "class", "event_id", "status",
          "receiver")


class Hub:
    def __init__(self, endpoint: str, log: Any) -> None:
        self.endpoint = endpoint
        self.log = log
        self.clients: set[asyncio.Queue[bytes]] = set()
        self.ctx: zmq.asyncio.Context | None = None
        self.sock: zmq.asyncio.Socket | None = None
        self.received = 0
        self.skipped = 0
        self.errors = 0

    def join(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)
        if not self.clients:
            self._subscribe(True)
        self.clients.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[bytes]) -> None:
        self.clients.discard(queue)
        if not self.clients:
            self._subscribe(False)

    def _subscribe(self, on: bool) -> None:
        if self.sock is None:
            return
        for topic in TOPICS:
            self.sock.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, topic)

    def start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        # ZeroMQ connects in the background and reconnects when the router restarts.
        self.sock.connect(self.endpoint)
        if self.clients:
            self._subscribe(True)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        if self.ctx is not None:
            self.ctx.term()

    async def run(self) -> None:
        """Read the router's messages and hand them to every page; never dies."""
        assert self.sock is not None
        while True:
            try:
                frames = await self.sock.recv_multipart()
                self.dispatch(frames)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM:
                    return
                self.errors += 1
                self.log.warning("web.live_failed", error=str(exc))
                await asyncio.sleep(1.0)
            except Exception:  # a bug here must not end live updates
                self.errors += 1
                self.log.exception("web.live_failed")
                await asyncio.sleep(1.0)

    def dispatch(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        topic = frames[0].decode("ascii", "replace")
        try:
            data = json.loads(frames[1])
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        self.received += 1
        line = json.dumps({"topic": topic, **{k: data[k] for k in FIELDS if k in data}},
                          ensure_ascii=True).encode()
        for queue in list(self.clients):
            try:
                queue.put_nowait(line)
            except asyncio.QueueFull:
                self.skipped += 1

    def info(self) -> dict[str, int]:
        return {"pages": len(self.clients), "received": self.received,
                "skipped": self.skipped, "errors": self.errors}


async def cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
