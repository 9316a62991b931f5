"""ZeroMQ CURVE between hosts: key files and the client side's socket (pyzmq).

Key files are pyzmq's certificate format (``zmq.auth.create_certificates``):
``NAME.key`` holds the public key, ``NAME.key_secret`` both keys and is 0600.
The router authorises a client by finding its public key file in a directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass

import zmq
import zmq.auth

from knotify.errors import KeyFileError


@dataclass(slots=True, frozen=True)
class ClientCurve:
    """What a client needs: the router's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes


def make_keys(directory: str, name: str) -> tuple[str, str]:
    """Write ``NAME.key`` (0644) and ``NAME.key_secret`` (0600); refuse to overwrite."""
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    public = os.path.join(directory, f"{name}.key")
    secret = public + "_secret"
    for path in (public, secret):
        if os.path.exists(path):
            raise KeyFileError(f"{path} already exists; remove it first to make a new key pair")
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    return public, secret


def load_public(path: str) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read a public key ({exc})") from None
    return public


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, which must not be readable by others."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: a secret key must be readable by its owner only "
                        f"(mode {stat.S_IMODE(mode):04o}; chmod 600 it)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read a key pair ({exc})") from None
    if secret is None:
        raise KeyFileError(f"{path}: holds no secret key (use the .key_secret file)")
    return public, secret


def load_client(server_key: str, secret_key: str) -> ClientCurve:
    public, secret = load_secret(secret_key)
    return ClientCurve(load_public(server_key), public, secret)


def curve_request(endpoint: str, payload: bytes, timeout: float, curve: ClientCurve) -> bytes:
    """One request over CURVE; TimeoutError if no answer (wrong key, router down, ...),
    another OSError if libzmq refuses (a malformed endpoint, say)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_serverkey = curve.server_public
        sock.curve_publickey = curve.public
        sock.curve_secretkey = curve.secret
        sock.connect(endpoint)
        sock.send(payload)
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"no answer from {endpoint} in {timeout:g}s (router down, or "
                               "this host's key is not authorised there)")
        return bytes(sock.recv_multipart()[-1])
    except zmq.ZMQError as exc:  # callers handle OSError: a client never sees libzmq's types
        raise ConnectionError(exc.errno, f"{endpoint}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.close(linger=0)


def clients_in(directory: str) -> list[str]:
    """Names of the authorised client keys (``*.key``) in a directory."""
    try:
        return sorted(n[:-4] for n in os.listdir(directory) if n.endswith(".key"))
    except OSError:
        return []
