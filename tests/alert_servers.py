"""Real receivers for the alert tests: an HTTP server (json://, Mattermost webhooks) and SMTP.

Both run in the test process on 127.0.0.1 (or another address: ``host``, e.g. a bridge
in a network namespace, tests/peer_cluster.py) and record what they get. The HTTP
server can be down (not listening), answer with an error, or stall, per path
prefix, and can be started later on the same port ("the chat was down for a
minute"). The SMTP server is aiosmtpd's, receiving for real.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

#: Secrets put in test URLs: they must never show in logs, history or messages.
PASSWORD = "Pw-s3cret-Xy7q"
TOKEN = "tokenabcdefghijklmnopqrstuv1234"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    t_start: float
    t_end: float = 0.0
    status: int = 200

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpSink:
    """Records POSTs. ``behaviour[prefix]`` is "ok", "fail" (HTTP 500), "sleep:SECONDS" or
    "429:RETRY_AFTER:COUNT" (the first COUNT requests get 429 Too Many Requests, with
    ``Retry-After: RETRY_AFTER`` unless it is empty; they are kept in ``refused``)."""

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    requests: list[Request] = field(default_factory=list)
    started: list[Request] = field(default_factory=list)
    refused: list[Request] = field(default_factory=list)
    behaviour: dict[str, str] = field(default_factory=dict)
    _throttled: dict[str, int] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> HttpSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                req = Request(self.path, dict(self.headers), body, time.time())
                with sink._lock:
                    sink.started.append(req)
                prefix, mode = next(((p, m) for p, m in sink.behaviour.items()
                                     if self.path.startswith(p)), ("", "ok"))
                if mode.startswith("429:"):
                    _, after, count = (mode.split(":") + ["1"])[:3]
                    with sink._lock:
                        used = sink._throttled.get(prefix, 0)
                        if used < int(count):
                            sink._throttled[prefix] = used + 1
                        else:
                            mode = "ok"
                    if mode != "ok":
                        self.send_response(429)
                        if after:
                            self.send_header("Retry-After", after)
                        self.end_headers()
                        self.wfile.write(b"slow down")
                        req.t_end, req.status = time.time(), 429
                        with sink._lock:
                            sink.refused.append(req)
                        return
                if mode.startswith("sleep:"):
                    time.sleep(float(mode[6:]))
                    mode = "ok"
                if mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"broken on purpose")
                    return
                req.t_end = time.time()
                with sink._lock:
                    sink.requests.append(req)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path: str = "/hook", scheme: str = "json", auth: str = "") -> str:
        return f"{scheme}://{auth + '@' if auth else ''}{self.host}:{self.port}{path}"

    def mattermost_url(self, token: str = TOKEN) -> str:
        return f"mmost://{self.host}:{self.port}/{token}"

    def got(self, prefix: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def __enter__(self) -> HttpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        assert part is not None
        return str(part.get_content())


class SmtpSink:
    """aiosmtpd on 127.0.0.1 (or ``host``), keeping every message it receives."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.mails: list[Mail] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any,
                                  envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                sink.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), msg))
                return "250 OK"

        self.controller = Controller(Handler(), hostname=host, port=self.port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def url(self, to: str = "ops@example.com", sender: str = "knotify@example.com") -> str:
        return f"mailto://{self.host}:{self.port}?to={to}&from={sender}"


#: Short durations for tests: nothing here waits on a clock, only polls for results.
FAST_ALERTS = """
[alerts]
group_wait = "300ms"
retry_initial = "200ms"
retry_max = "800ms"
flap_threshold = 0
"""
#: The same, grouped by host: tests of delivery (order, parallelism, retries) that need one
#: group per host, whatever the cluster view makes of VI_1 on many hosts.
FAST_BY_HOST = FAST_ALERTS + 'group_by = ["host"]\n'



def alert_items(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every alert item of a history answer, oldest event first, with its event attached."""
    return [{**item, "event": ev} for ev in reversed(history) for item in ev.get("alerts", [])]


def settled(history: list[dict[str, Any]]) -> bool:
    """No alert item waiting and no message of any item still open."""
    for item in alert_items(history):
        if item["status"] == "waiting":
            return False
        msg = item.get("message")
        while msg is not None:
            if msg["status"] in ("pending", "sending"):
                return False
            msg = msg.get("escalation")
    return True
