"""knotify agent: a sending host's heartbeat, and the courier for its spool.

Run on every keepalived host that reports to routers elsewhere. Every
``[agent] heartbeat`` it tells each router in ``[hook] endpoints`` that the host
is alive (so that silence means something: PEER_SILENT), then delivers what the
hooks could not:

- ``SPOOL/to/ENDPOINT/``: events that one remote router missed while another got
  them; sent to that router only, oldest first.
- ``SPOOL/new/``: events no router acked, when every endpoint is remote (a local
  router, an ``ipc://`` endpoint, replays that folder itself). Sent to every router;
  a router that misses one gets it through its own outbox later.

A file is removed only once its router(s) acked it: delivery is at least once, and
the routers dedupe by event id, so every router ends up with every event.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from knotify import __version__, client, fastjson, replay, spool
from knotify.cluster import heartbeat
from knotify.config import Config
from knotify.errors import AgentBusy, RouterUnavailable

#: Leave room under the router's max_message for the envelope.
MAX_REQUEST = 128 * 1024
#: Batches per folder per cycle, so heartbeats keep their rhythm during a big backlog.
MAX_BATCHES = 20



def _not_json(word: str) -> object:
    raise ValueError(f"{word} is not JSON")


class Agent:
    def __init__(self, config: Config, log: Any,
                 out: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log
        self.out = out
        settings = client.Settings()
        settings.endpoints = list(config.client_endpoints)
        settings.ack_timeout = config.agent.timeout
        settings.spool_dir = config.hook.spool_dir
        settings.host = config.hook.host or os.uname().nodename
        if config.hook.curve is not None:
            settings.curve = (config.hook.curve.server_key, config.hook.curve.secret_key)
        self.settings = settings
        self.remote = [e for e in settings.endpoints if not e.startswith("ipc://")]
        #: With a local router among the endpoints, SPOOL/new is its to replay.
        self.owns_new = len(self.remote) == len(settings.endpoints)
        self.up: dict[str, bool] = {}
        self.delivered = 0
        self.stopping = False
        self._lock: int | None = None

    @property
    def host(self) -> str:
        return self.settings.host

    def lock(self) -> None:
        os.makedirs(self.settings.spool_dir, mode=0o750, exist_ok=True)
        path = os.path.join(self.settings.spool_dir, "agent.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentBusy(f"another knotify agent (pid {holder}) serves the spool "
                            f"{self.settings.spool_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- talking to routers ---------------------------------------------------------------

    def _ask(self, endpoint: str, payload: bytes) -> dict[str, Any] | None:
        """One request; the answer, or None when the router did not answer in time."""
        try:
            answer = client.ask(self.settings, endpoint, payload)
        except RouterUnavailable as exc:
            self._mark(endpoint, False, str(exc))
            return None
        self._mark(endpoint, True)
        return answer

    def _mark(self, endpoint: str, up: bool, why: str = "") -> None:
        if self.up.get(endpoint) != up:
            if up:
                self.log.info("agent.router_up", endpoint=endpoint)
            else:
                self.log.warning("agent.router_down", endpoint=endpoint,
                                 reason=why or "no answer in time")
        self.up[endpoint] = up

    def spool_depth(self) -> int:
        total = spool.depth(self.settings.spool_dir) if self.owns_new else 0
        return total + sum(spool.depth(spool.endpoint_dir(self.settings.spool_dir, e))
                           for e in self.remote)

    def beat(self) -> dict[str, bool]:
        """One heartbeat to every router: which of them acked it."""
        payload = fastjson.dumps(heartbeat.encode(self.host, self.config.agent.heartbeat,
                                                  self.spool_depth(), __version__)).encode()
        result = {}
        for endpoint in self.settings.endpoints:
            answer = self._ask(endpoint, payload)
            ok = bool(answer and answer.get("ok"))
            if answer is not None and not ok:
                self.log.warning("agent.heartbeat_refused", endpoint=endpoint,
                                 error=answer.get("error"))
            result[endpoint] = ok
        return result

    def _send(self, endpoint: str, events: list[dict[str, Any]]) -> set[str]:
        """Send events in order (several requests if big); the ids the router is done with.

        Stops at the first request that fails, so a router never gets a later event
        before an earlier one it missed.
        """
        done: set[str] = set()
        chunk: list[dict[str, Any]] = []
        size = 0
        chunks: list[list[dict[str, Any]]] = []
        for event in events:
            length = len(fastjson.dumps(event))
            if chunk and size + length > MAX_REQUEST:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(event)
            size += length
        if chunk:
            chunks.append(chunk)
        for part in chunks:
            answer = self._ask(endpoint, client.message("events", events=part))
            if not answer or not answer.get("ok"):
                if answer is not None:
                    self.log.warning("agent.send_refused", endpoint=endpoint,
                                     error=answer.get("error"))
                break
            done.update(i for i in answer.get("ids", []) if isinstance(i, str))
            for bad in answer.get("rejected", []):
                # Refused for good (invalid): retrying would block the queue forever.
                index = bad.get("index") if isinstance(bad, dict) else None
                if isinstance(index, int) and 0 <= index < len(part):
                    done.add(str(part[index].get("id")))
                    self.log.error("agent.event_rejected", endpoint=endpoint,
                                   event_id=part[index].get("id"), error=bad.get("error"))
        return done

    # -- the spool ---------------------------------------------------------------------

    def drain(self, up: set[str] | None = None) -> int:
        """Deliver what waits in the outboxes (and SPOOL/new when it is ours); how many.

        ``up``: the routers worth trying (those that just acked a heartbeat); default all.
        """
        up = set(self.settings.endpoints) if up is None else up
        count = 0
        root = self.settings.spool_dir
        for endpoint in self.remote:
            count += self._drain(spool.endpoint_dir(root, endpoint), [endpoint], up)
        if self.owns_new:
            count += self._drain(root, list(self.settings.endpoints), up)
        return count

    def _drain(self, folder: str, destinations: list[str], up: set[str]) -> int:
        count = 0
        self._recover_tmp(folder)
        for _ in range(MAX_BATCHES):
            if self.stopping or not up.intersection(destinations):
                break
            if os.path.islink(os.path.join(folder, "new")):
                # The hook's group may rename spool entries: never read through a link.
                self.log.error("agent.spool_not_a_folder", path=os.path.join(folder, "new"),
                               detail="a symbolic link; not read")
                break
            paths = spool.pending(folder, limit=self.config.agent.batch)
            if not paths:
                break
            items: list[tuple[str, dict[str, Any]]] = []
            for path, content in spool.read(paths, self.config.max_message, self._quarantine):
                try:
                    data = json.loads(content, parse_constant=_not_json)
                    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                        raise ValueError("not an event")
                except ValueError as exc:
                    self._quarantine(path, str(exc))
                    continue
                extra = data.get("extra")
                data["extra"] = {**(extra if isinstance(extra, dict) else {}), "via": "spool"}
                items.append((path, data))
            done = {e: self._send(e, [d for _, d in items]) if e in up else set()
                    for e in destinations}
            moved = 0
            for path, data in items:
                missing = [e for e in destinations if data["id"] not in done[e]]
                if len(missing) == len(destinations):
                    continue  # nobody took it: it stays, in order, for the next cycle
                if missing:
                    self._hand_over(path, missing)
                else:
                    spool.remove([path])
                moved += 1
            delivered = sum(1 for _, d in items if all(d["id"] in done[e] for e in destinations))
            count += delivered
            if moved < len(items) or len(paths) < self.config.agent.batch:
                break
        if count:
            self.delivered += count
            self.log.info("agent.delivered", events=count, folder=folder)
        return count

    def _hand_over(self, path: str, endpoints: list[str]) -> None:
        """Move a file some routers have into the outboxes of those that do not."""
        name = os.path.basename(path)
        for endpoint in endpoints:
            folder = spool.endpoint_dir(self.settings.spool_dir, endpoint)
            new = os.path.join(folder, "new")
            spool.ensure_folder(os.path.join(folder, "tmp"))  # the spool's own permissions
            spool.ensure_folder(new)
            with contextlib.suppress(FileExistsError):
                os.link(path, os.path.join(new, name))
            fd = os.open(new, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        spool.remove([path])

    def _recover_tmp(self, folder: str) -> None:
        """Events a hook killed before its rename left in FOLDER/tmp (knotify.replay)."""
        def bad(fd: int, name: str, reason: str) -> None:
            try:
                moved = spool.quarantine(self.settings.spool_dir, fd, name)
            except OSError as exc:
                moved = f"left in place ({exc.strerror or exc})"
            self.log.error("agent.bad_spool_file", path=os.path.join(folder, "tmp", name),
                           reason=reason, moved_to=moved)

        try:
            replay.recover_tmp(folder, self.config.max_message, self.log, bad)
        except OSError as exc:
            self.log.warning("agent.spool_scan_failed", folder=folder, error=str(exc))

    def _quarantine(self, path: str, reason: str) -> None:
        """Move a spool file that is not an event (whatever it is) to SPOOL/bad."""
        folder, name = os.path.split(path)
        try:
            fd = spool.open_folder(os.path.dirname(folder), os.path.basename(folder))
            try:
                moved = spool.quarantine(self.settings.spool_dir, fd, name)
            finally:
                os.close(fd)
        except OSError as exc:
            moved = f"left in place ({exc.strerror or exc})"
        self.log.error("agent.bad_spool_file", path=path, reason=reason, moved_to=moved)

    # -- the loop --------------------------------------------------------------------------

    def cycle(self) -> dict[str, bool]:
        beats = self.beat()
        self.drain({e for e, ok in beats.items() if ok})
        if self.out:
            up = ", ".join(f"{e} {'ok' if ok else 'DOWN'}" for e, ok in beats.items())
            self.out(f"heartbeat {self.host}: {up}; delivered {self.delivered}, "
                     f"waiting {self.spool_depth()}")
        return beats

    def run(self) -> None:
        def stop(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.log.info("agent.started", host=self.host, endpoints=self.settings.endpoints,
                      heartbeat=self.config.agent.heartbeat, spool=self.settings.spool_dir,
                      drains_new=self.owns_new)
        interval = self.config.agent.heartbeat
        next_at = time.monotonic()
        while not self.stopping:
            try:
                self.cycle()
            except Exception:  # a full disk or a bug: log it, try again next round
                self.log.exception("agent.round_failed")
            next_at += interval
            while not self.stopping:
                left = next_at - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.2))
            if time.monotonic() - next_at > interval:
                next_at = time.monotonic()  # fell behind (slow routers): no burst to catch up
        self.log.info("agent.stopped", delivered=self.delivered)
