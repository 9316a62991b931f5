"""Two real routers peered over CURVE TCP on 127.0.0.1, with a cuttable link (tests).

Each router's peer endpoint goes through a :class:`Relay`, a plain TCP forwarder in
the test process: ``cut()`` closes its connections and refuses new ones (the peer
link is down, nothing else is), ``mend()`` lets them through again. Events are sent
to both routers with the same ids, as hooks listing both routers in ``[hook]
endpoints`` do.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import KEnv, RouterProcess, check_router_logs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relay:
    """A TCP forwarder 127.0.0.1:port -> 127.0.0.1:target that can be cut and mended."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._open = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._server.settimeout(0.2)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        self._open = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def mend(self) -> None:
        self._open = True

    def close(self) -> None:
        self._stop = True
        self.cut()
        self._server.close()


class Pair:
    """Routers lb1 and lb2 (beside keepalived hosts lb1 and lb2), peered."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        for name in ("lb1", "lb2", "keygen"):
            (root / name).mkdir()
        self.envs = {name: KEnv(root / name) for name in ("lb1", "lb2")}
        self.ports = {name: free_port() for name in self.envs}
        self.relays = {name: Relay(port) for name, port in self.ports.items()}
        self.routers = {name: RouterProcess(env) for name, env in self.envs.items()}

    def configure(self, body: str, peer_timeout: str = "3s") -> None:
        """The same ``body`` (alerts, receivers, rules) on both, with [router] and [peers]."""
        if not self.keys.exists():
            KEnv(self.root / "keygen").cli("keygen", "router", "--dir", str(self.keys))
        for name, env in self.envs.items():
            other = "lb2" if name == "lb1" else "lb1"
            env.write_config(f"""
[router]
listen = ["tcp://127.0.0.1:{self.ports[name]}"]

[router.curve]
secret_key = "{self.keys}/router.key_secret"
clients = "{self.keys}"
admins = ["router"]

[hook]
host = "{name}"

[peers]
name = "{name}"
peer_timeout = "{peer_timeout}"

[peers.routers.{other}]
endpoint = "tcp://127.0.0.1:{self.relays[other].port}"
""" + body)

    def start(self, *names: str) -> None:
        for name in names or tuple(self.routers):
            self.routers[name].start()

    def send(self, *reports: tuple[str, str, str, str, int | None],
             to: tuple[str, ...] = ("lb1", "lb2")) -> list[str]:
        """The same events (same ids) to each router in ``to``; their ids."""
        from knotify import zmtp

        now = time.time_ns()
        events = [{"v": 1, "id": uuid.uuid4().hex, "host": host, "kind": kind, "name": name,
                   "state": state, "prio": prio, "seq": int(now // 1000) + i, "ts_ns": now + i,
                   "source": "send"}
                  for i, (host, kind, name, state, prio) in enumerate(reports)]
        payload = json.dumps({"v": 1, "op": "events", "events": events}).encode()
        for name in to:
            env = self.envs[name]
            answer = json.loads(zmtp.request(f"ipc://{env.runtime}/knotify.sock", payload, 10))
            assert answer["ok"] and answer["rejected"] == [], answer
        return [e["id"] for e in events]

    def messages(self, name: str) -> list[dict[str, Any]]:
        """Every alert message router ``name`` made (deduplicated), oldest first."""
        seen: dict[int, dict[str, Any]] = {}
        for ev in self.envs[name].history():
            for item in ev.get("alerts", []):
                msg = item.get("message")
                if msg:
                    seen[msg["id"] if "id" in msg else msg["rowid"]] = msg
        return [seen[k] for k in sorted(seen)]

    def peers(self, name: str) -> dict[str, Any]:
        out = json.loads(self.envs[name].cli("status", "--json").stdout)
        return dict(out["router"]["peers"])


@contextmanager
def pair() -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(prefix="kp-", dir="/tmp"))
    made = Pair(root)
    try:
        yield made
        check_router_logs(list(made.routers.values()))
    finally:
        for router in made.routers.values():
            if router.alive:
                router.kill()
        for relay in made.relays.values():
            relay.close()
        shutil.rmtree(root, ignore_errors=True)
