"""The hand-written ZMTP 3.0 DEALER (knotify/zmtp.py) against real libzmq, and hostile peers."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from conftest import need

from knotify import zmtp
from knotify.errors import ZmtpError
from knotify.zmtp import Dealer, parse_endpoint, request

Handler = Callable[[list[bytes]], list[bytes] | None]


class LibzmqRouter:
    """A pyzmq ROUTER in a thread: ``handler(frames) -> reply frames`` (None = no reply)."""

    def __init__(self, endpoint: str, handler: Handler, **options: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            self.sock.setsockopt(getattr(zmq, name), value)
        if endpoint.endswith(":*"):
            port = self.sock.bind_to_random_port(endpoint[:-2])
            endpoint = f"{endpoint[:-2]}:{port}"
        else:
            self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.handler = handler
        self.received: list[list[bytes]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(20):
                continue
            identity, *frames = self.sock.recv_multipart()
            self.received.append(frames)
            answer = self.handler(frames)
            if answer is not None:
                self.sock.send_multipart([identity, *answer])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def serve() -> Iterator[Callable[..., LibzmqRouter]]:
    routers: list[LibzmqRouter] = []

    def start(endpoint: str, handler: Handler, **options: int) -> LibzmqRouter:
        router = LibzmqRouter(endpoint, handler, **options)
        routers.append(router)
        return router

    yield start
    for router in routers:
        router.close()


def echo(frames: list[bytes]) -> list[bytes]:
    return [b"echo:" + frames[0]]


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/r.sock"


# --------------------------------------------------------------------------- against libzmq


def test_request_reply_over_ipc(serve: Callable[..., LibzmqRouter], ipc_path: str) -> None:
    router = serve(ipc_path, echo)
    assert request(ipc_path, b"hello", 5) == b"echo:hello"
    assert router.received == [[b"hello"]]


def test_request_reply_over_tcp(serve: Callable[..., LibzmqRouter]) -> None:
    router = serve("tcp://127.0.0.1:*", echo)
    assert request(router.endpoint, b'{"v":1}', 5) == b'echo:{"v":1}'


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_request_reply_over_tcp_ipv6(serve: Callable[..., LibzmqRouter]) -> None:
    need(_ipv6_loopback(), "no IPv6 loopback here")
    router = serve("tcp://[::1]:*", echo, IPV6=1)
    assert router.endpoint.startswith("tcp://[::1]:")
    assert request(router.endpoint, b"six", 5) == b"echo:six"


def test_request_reply_over_abstract_ipc(serve: Callable[..., LibzmqRouter]) -> None:
    endpoint = f"ipc://@knotify-test-{time.monotonic_ns()}"
    serve(endpoint, echo)
    assert request(endpoint, b"abstract", 5) == b"echo:abstract"


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 70_000, 3 * 1024 * 1024])
def test_frame_sizes_both_ways(serve: Callable[..., LibzmqRouter], ipc_path: str,
                               size: int) -> None:
    payload = bytes((i * 7) % 256 for i in range(size))
    router = serve(ipc_path, lambda frames: [frames[0][::-1] + b"!"])
    assert request(ipc_path, payload, 10) == payload[::-1] + b"!"
    assert router.received == [[payload]]


def test_multipart_reply_returns_all_frames_and_request_the_first(
    serve: Callable[..., LibzmqRouter], ipc_path: str
) -> None:
    parts = [b"first", b"", b"x" * 300, b"last"]
    serve(ipc_path, lambda frames: parts)
    assert request(ipc_path, b"q", 5) == b"first"
    dealer = Dealer(ipc_path, 5)
    try:
        dealer.send(b"q")
        assert dealer.recv() == parts
    finally:
        dealer.close()


def test_several_requests_on_one_connection(serve: Callable[..., LibzmqRouter],
                                            ipc_path: str) -> None:
    serve(ipc_path, echo)
    dealer = Dealer(ipc_path, 5)
    try:
        for i in range(20):
            dealer.set_timeout(5)
            dealer.send(b"%d" % i)
            assert dealer.recv() == [b"echo:%d" % i]
    finally:
        dealer.close()


def test_heartbeat_commands_are_skipped(serve: Callable[..., LibzmqRouter],
                                        ipc_path: str) -> None:
    def slow(frames: list[bytes]) -> list[bytes]:
        time.sleep(0.4)  # libzmq sends PINGs meanwhile
        return [b"late"]

    serve(ipc_path, slow, HEARTBEAT_IVL=20, HEARTBEAT_TIMEOUT=30_000, HEARTBEAT_TTL=30_000)
    assert request(ipc_path, b"q", 10) == b"late"


def test_many_concurrent_clients(serve: Callable[..., LibzmqRouter], ipc_path: str) -> None:
    serve(ipc_path, echo)
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        results[i] = request(ipc_path, b"%d" % i, 10)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == {i: b"echo:%d" % i for i in range(30)}


def test_libzmq_maxmsgsize_drops_the_connection_not_a_hang(
    serve: Callable[..., LibzmqRouter], ipc_path: str
) -> None:
    serve(ipc_path, echo, MAXMSGSIZE=1000)
    start = time.monotonic()
    with pytest.raises((ZmtpError, TimeoutError, ConnectionError)):
        request(ipc_path, b"x" * 5000, 2)
    assert time.monotonic() - start < 30  # bounded by the timeout, not stuck


# --------------------------------------------------------------------------- failures


def test_timeout_when_the_router_never_replies(serve: Callable[..., LibzmqRouter],
                                               ipc_path: str) -> None:
    router = serve(ipc_path, lambda frames: None)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        request(ipc_path, b"anyone?", 0.3)
    elapsed = time.monotonic() - start
    assert router.received == [[b"anyone?"]]
    # The timeout is the feature: not cut short (bar clock granularity), never a hang.
    assert 0.29 <= elapsed < 20


def test_connection_refused_tcp() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(ConnectionRefusedError):
            request(f"tcp://127.0.0.1:{port}", b"x", 2)


def test_missing_ipc_socket(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        request(f"ipc://{tmp_path}/nobody.sock", b"x", 2)


def test_ipc_socket_nobody_listens_on(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # a stale socket file, as left by a crashed router
    with pytest.raises(ConnectionRefusedError):
        request(f"ipc://{path}", b"x", 2)


class RawPeer:
    """A plain stream server that answers every connection with ``behaviour(conn)``."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.endpoint = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.behaviour = behaviour
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        self.conns.append(conn)
        try:
            self.behaviour(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()
        self.thread.join(5)


@pytest.fixture
def raw_peer() -> Iterator[Callable[[Callable[[socket.socket], None]], RawPeer]]:
    peers: list[RawPeer] = []

    def start(behaviour: Callable[[socket.socket], None]) -> RawPeer:
        peer = RawPeer(behaviour)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.close()


def _zmtp_greeting(mechanism: bytes = b"NULL", major: int = 3) -> bytes:
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([major, 0]) + mechanism.ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


def _command(body: bytes) -> bytes:
    return bytes([0x04, len(body)]) + body


def test_http_server_is_not_zmtp(raw_peer) -> None:  # type: ignore[no-untyped-def]
    peer = raw_peer(lambda c: c.sendall(b"HTTP/1.1 400 Bad Request\r\n" + b"x" * 100))
    with pytest.raises(ZmtpError, match="did not send a ZMTP signature"):
        request(peer.endpoint, b"x", 5)


def test_garbage_then_close_is_an_error(raw_peer) -> None:  # type: ignore[no-untyped-def]
    def behaviour(conn: socket.socket) -> None:
        conn.recv(65536)  # read what the client sent, so the close is a clean FIN
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        conn.close()

    peer = raw_peer(behaviour)
    with pytest.raises(ZmtpError, match="closed the connection"):
        request(peer.endpoint, b"x", 5)


def test_peer_that_resets_is_an_oserror(raw_peer) -> None:  # type: ignore[no-untyped-def]
    def behaviour(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST

    peer = raw_peer(behaviour)
    with pytest.raises((ZmtpError, ConnectionError)):
        request(peer.endpoint, b"x", 5)


def test_silent_peer_times_out(raw_peer) -> None:  # type: ignore[no-untyped-def]
    done = threading.Event()
    peer = raw_peer(lambda c: done.wait(10))
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        request(peer.endpoint, b"x", 0.3)
    done.set()
    assert time.monotonic() - start < 20


def test_peer_that_trickles_bytes_still_times_out(raw_peer) -> None:  # type: ignore[no-untyped-def]
    """The deadline covers the whole exchange, not each read: a peer that completes the
    handshake, then sends its reply a byte every 50 ms (each byte well within the
    timeout) must not keep the client waiting past it."""
    ready = _command(b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER")
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.sendall(_zmtp_greeting() + ready)
        conn.recv(65536)
        conn.sendall(bytes([0x02]) + struct.pack(">Q", 1 << 20))  # a 1 MiB reply frame...
        until = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < until:
            conn.sendall(b"x")  # ...that never completes: each byte resets a per-read timeout
            stop.wait(0.05)
        conn.close()  # then a client with a per-read timeout sees the close, not a timeout

    peer = raw_peer(trickle)
    start = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            request(peer.endpoint, b"x", 0.5)
        # 0.5 s is the bound; the peer trickles for 10 s.
        assert time.monotonic() - start < 8
    finally:
        stop.set()


def test_zmtp_2_peer_is_refused(raw_peer) -> None:  # type: ignore[no-untyped-def]
    peer = raw_peer(lambda c: c.sendall(_zmtp_greeting(major=2)))
    with pytest.raises(ZmtpError, match="ZMTP version or security mechanism"):
        request(peer.endpoint, b"x", 5)


def test_curve_peer_is_refused(raw_peer) -> None:  # type: ignore[no-untyped-def]
    peer = raw_peer(lambda c: c.sendall(_zmtp_greeting(b"CURVE")))
    with pytest.raises(ZmtpError, match="security mechanism"):
        request(peer.endpoint, b"x", 5)


def test_error_command_is_reported(raw_peer) -> None:  # type: ignore[no-untyped-def]
    reason = b"go away"
    peer = raw_peer(lambda c: c.sendall(
        _zmtp_greeting() + _command(b"\x05ERROR" + bytes([len(reason)]) + reason)))
    with pytest.raises(ZmtpError, match="refused the handshake: go away"):
        request(peer.endpoint, b"x", 5)


def test_missing_ready_is_reported(raw_peer) -> None:  # type: ignore[no-untyped-def]
    peer = raw_peer(lambda c: c.sendall(_zmtp_greeting() + b"\x00\x03abc"))
    with pytest.raises(ZmtpError, match="did not send READY"):
        request(peer.endpoint, b"x", 5)


def test_oversize_frame_header_is_refused_without_allocating(raw_peer) -> None:  # type: ignore[no-untyped-def]
    ready = _command(b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER")
    huge = bytes([0x02]) + struct.pack(">Q", 2**62)

    def behaviour(conn: socket.socket) -> None:
        conn.sendall(_zmtp_greeting() + ready)
        conn.recv(65536)
        conn.sendall(huge)
        conn.recv(1)  # until the client hangs up

    peer = raw_peer(behaviour)
    with pytest.raises(ZmtpError, match="over the limit"):
        request(peer.endpoint, b"x", 5)


# --------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(("endpoint", "family", "address"), [
    ("ipc:///run/knotify/knotify.sock", socket.AF_UNIX, "/run/knotify/knotify.sock"),
    ("ipc://@abstract-name", socket.AF_UNIX, "\0abstract-name"),
    ("tcp://10.0.0.1:5555", socket.AF_INET, ("10.0.0.1", 5555)),
    ("tcp://router.example:1", socket.AF_INET, ("router.example", 1)),
    ("tcp://[fd00::1]:5555", socket.AF_INET6, ("fd00::1", 5555)),
])
def test_parse_endpoint(endpoint: str, family: int, address: object) -> None:
    assert parse_endpoint(endpoint) == (family, address)


@pytest.mark.parametrize(("endpoint", "wanted"), [
    ("udp://x:1", "expected ipc://PATH or tcp://HOST:PORT"),
    ("knotify.sock", "expected ipc://PATH or tcp://HOST:PORT"),
    ("tcp://host", "expected tcp://HOST:PORT"),
    ("tcp://host:port", "expected tcp://HOST:PORT"),
    ("tcp://host:", "expected tcp://HOST:PORT"),
])
def test_parse_endpoint_errors_name_the_endpoint(endpoint: str, wanted: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint(endpoint)
    assert repr(endpoint) in str(info.value) and wanted in str(info.value)


def test_greeting_is_zmtp_3_null() -> None:
    greeting = zmtp._GREETING
    assert len(greeting) == 64
    assert greeting[0] == 0xFF and greeting[9] == 0x7F
    assert greeting[10:12] == b"\x03\x00"
    assert greeting[12:32].rstrip(b"\x00") == b"NULL"
