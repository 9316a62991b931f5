"""A minimal ZeroMQ (ZMTP 3.0, NULL mechanism) DEALER peer on plain sockets.

Why not pyzmq here: importing pyzmq costs about 25 ms, more than twice the
bare interpreter's start-up, and the hook runs once per keepalived event on its
hot path. This peer speaks the same wire protocol (RFC 23/ZMTP) to the router's
real libzmq ROUTER socket over ``ipc://`` and plain ``tcp://``; CURVE endpoints
go through pyzmq (:mod:`knotify.transport`). tests/test_zmtp.py checks it
against libzmq in both directions.
"""

from __future__ import annotations

import _socket as socket
import struct
import time

from knotify.errors import ZmtpError

_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
MAX_FRAME = 64 * 1024 * 1024



def _command(name: bytes, props: dict[bytes, bytes]) -> bytes:
    body = bytes([len(name)]) + name
    for key, value in props.items():
        body += bytes([len(key)]) + key + struct.pack(">I", len(value)) + value
    return _frame(body, _COMMAND)


def _frame(body: bytes, flags: int = 0) -> bytes:
    size = len(body)
    if size > 255:
        return bytes([flags | _LONG]) + struct.pack(">Q", size) + body
    return bytes([flags, size]) + body


_READY = _command(b"READY", {b"Socket-Type": b"DEALER", b"Identity": b""})


def parse_endpoint(endpoint: str) -> tuple[int, object]:
    """Socket family and address for ``ipc://PATH``, ``ipc://@NAME`` or ``tcp://HOST:PORT``."""
    if endpoint.startswith("ipc://"):
        path = endpoint[6:]
        if path.startswith("@"):
            return socket.AF_UNIX, "\0" + path[1:]
        return socket.AF_UNIX, path
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[6:].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            return socket.AF_INET6, (host[1:-1], int(port))
        return socket.AF_INET, (host, int(port))
    raise ValueError(f"endpoint {endpoint!r}: expected ipc://PATH or tcp://HOST:PORT")


class Dealer:
    """One connection to a ROUTER socket; requests are sent as one-frame messages."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        family, address = parse_endpoint(endpoint)
        self._deadline = time.monotonic() + timeout
        self._buf = bytearray()
        self._pos = 0  # read position in _buf: frames are sliced out, not copied away
        sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock = sock
        try:
            sock.settimeout(max(timeout, 0.001))
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(address)  # type: ignore[arg-type]
            sock.sendall(_GREETING + _READY)
            greeting = self._read(64)
            if greeting[0] != 0xFF or greeting[9] != 0x7F:
                raise ZmtpError("peer did not send a ZMTP signature")
            if greeting[10] < 3 or greeting[12:32].rstrip(b"\x00") != b"NULL":
                raise ZmtpError("peer wants a ZMTP version or security mechanism we do not speak")
            flags, body = self._read_frame()
            if not flags & _COMMAND or not body.startswith(b"\x05READY"):
                if body.startswith(b"\x05ERROR"):
                    reason = body[7:].decode(errors="replace")
                    raise ZmtpError("peer refused the handshake: " + reason)
                raise ZmtpError("peer did not send READY")
        except BaseException:
            sock.close()
            raise

    def set_timeout(self, timeout: float) -> None:
        self._deadline = time.monotonic() + timeout

    def _remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from the router in time")
        return left

    def _read(self, size: int) -> bytes:
        while len(self._buf) - self._pos < size:
            self._sock.settimeout(self._remaining())
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            chunk = self._sock.recv(max(65536, size - len(self._buf)))
            if not chunk:
                raise ZmtpError("the router closed the connection")
            self._buf += chunk
        data = bytes(self._buf[self._pos : self._pos + size])
        self._pos += size
        return data

    def _read_frame(self) -> tuple[int, bytes]:
        head = self._read(2)
        flags = head[0]
        if flags & _LONG:
            size = struct.unpack(">Q", bytes([head[1]]) + self._read(7))[0]
        else:
            size = head[1]
        if size > MAX_FRAME:
            raise ZmtpError(f"frame of {size} bytes is over the limit")
        return flags, self._read(size)

    def send(self, payload: bytes) -> None:
        self._sock.settimeout(self._remaining())
        self._sock.sendall(_frame(payload))

    def recv(self) -> list[bytes]:
        """The next message's frames (heartbeat commands are skipped)."""
        frames: list[bytes] = []
        while True:
            flags, body = self._read_frame()
            if flags & _COMMAND:
                continue
            frames.append(body)
            if not flags & _MORE:
                return frames

    def close(self) -> None:
        self._sock.close()


def request(endpoint: str, payload: bytes, timeout: float) -> bytes:
    """Send one request and return the first frame of the reply, within ``timeout`` seconds."""
    dealer = Dealer(endpoint, timeout)
    try:
        dealer.send(payload)
        return dealer.recv()[0]
    finally:
        dealer.close()
