"""``knotify web``: the pages, served by aiohttp in a process of their own.

The journal is read in worker threads through read-only SQLite connections
(:mod:`knotify.web.sources`), so a slow query never holds the event loop that
feeds the live updates, and never the router: the router only sees another reader
of its WAL file and, while a page listens, one subscriber on its PUB socket. The
cluster view's live figures (when a host was last heard, its spool) come from the
router's ``status`` answer when it gives one within half a second; the pages say
when it does not. Query strings are read in :mod:`knotify.web.query`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from knotify import client
from knotify.errors import JournalUnavailable, WindowError
from knotify.event import ID_CHARS
from knotify.units import format_duration
from knotify.web import data, views
from knotify.web.auth import COOKIE, Auth, loopback_host
from knotify.web.live import Hub, cancel
from knotify.web.query import BadRequest, link, query_int, query_text
from knotify.web.render import render
from knotify.web.sources import Reader, RouterStatus

MAX_LIMIT = 1000
PING_S = 15.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class WebSettings:
    journal: str
    pub_endpoint: str
    host: str = "127.0.0.1"
    port: int = 8650
    auth: Auth = field(default_factory=Auth)
    #: Where the router's control socket is (for its live status); None: not asked.
    router: client.Settings | None = None
    #: Serve any Host header without a token (behind a proxy that checks it).
    any_host: bool = False


class Web:
    def __init__(self, settings: WebSettings, log: Any) -> None:
        self.settings = settings
        self.log = log
        self.reader = Reader(settings.journal)
        self.hub = Hub(settings.pub_endpoint, log)
        self.status = RouterStatus(settings.router)
        self.stats = {"requests": 0, "errors": 0, "refused": 0}
        self._hub_task: asyncio.Task[None] | None = None

    # -- the app --------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.add_routes([
            web.get("/", self.overview),
            web.get("/timeline", self.timeline),
            web.get("/incident/{id}", self.incident),
            web.get("/history", self.history),
            web.get("/live", self.live),
            web.get("/login", self.login),
            web.get("/healthz", self.healthz),
        ])
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _start(self, app: web.Application) -> None:
        self.hub.start()
        self._hub_task = asyncio.get_running_loop().create_task(self.hub.run())

    async def _shutdown(self, app: web.Application) -> None:
        for queue in list(self.hub.clients):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(b"")  # ends each open stream
        await cancel(self._hub_task)
        self.hub.close()
        self.reader.close()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authentication, security headers, and every error answered and counted."""
        self.stats["requests"] += 1
        auth = self.settings.auth
        if request.path != "/healthz":
            if not auth.required and not self.settings.any_host \
                    and not loopback_host(request.host):
                self.stats["refused"] += 1
                return web.Response(status=421, text="knotify web answers only for "
                                    "localhost; set a token to serve other names\n")
            if request.path != "/login" and not auth.allows(
                    request.headers.get("Authorization", ""), request.cookies.get(COOKIE)):
                self.stats["refused"] += 1
                headers = {"WWW-Authenticate": 'Basic realm="knotify"'} if auth.users \
                    else {"WWW-Authenticate": 'Bearer realm="knotify"'}
                return web.Response(status=401, headers=headers, text=(
                    "knotify web needs a token: send 'Authorization: Bearer TOKEN', or open "
                    "/login?token=TOKEN once in a browser\n" if auth.token else
                    "knotify web needs a user name and password\n"))
        nonce = secrets.token_urlsafe(12)
        request["nonce"] = nonce
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except BadRequest as exc:
            response = self._page("error.html", request, status=400, heading="Bad request",
                                  message=str(exc))
        except WindowError as exc:
            response = self._page("error.html", request, status=400, heading="Bad window",
                                  message=str(exc))
        except JournalUnavailable as exc:
            response = self._page("error.html", request, status=503,
                                  heading="The journal cannot be read", message=str(exc))
        except sqlite3.Error as exc:
            self.stats["errors"] += 1
            self.log.warning("web.journal_error", path=request.path, error=str(exc))
            response = self._page("error.html", request, status=503,
                                  heading="The journal cannot be read",
                                  message=f"{self.settings.journal}: {exc}")
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.stats["errors"] += 1
            self.log.exception("web.request_failed", path=request.path)
            response = self._page("error.html", request, status=500, heading="Internal error",
                                  message=f"{type(exc).__name__}: the server's log has the "
                                  "details")
        if not response.prepared:
            response.headers["Content-Security-Policy"] = (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
                "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                "frame-ancestors 'none'; base-uri 'none'")
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _page(self, template: str, request: web.Request, status: int = 200,
              **context: Any) -> web.Response:
        fragment = request.query.get("fragment") == "1" and template != "error.html"
        name = template.replace(".html", "_live.html") if fragment else template
        html = render(name, link=link, nonce=request.get("nonce", ""),
                      stream="/live" if not fragment else "", journal=self.settings.journal,
                      now_ns=time.time_ns(), **{"page": "", **context})
        return web.Response(text=html, status=status, content_type="text/html")

    # -- pages ------------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        ov = await self.reader.read(data.overview)
        answer, error = await self.status.get()
        peers: dict[str, Any] = {}
        router: dict[str, Any] | None = None
        if answer is not None:
            for peer in (answer.get("cluster") or {}).get("peers", []):
                peers[peer["host"]] = peer
            info = answer.get("router") or {}
            router = {**info, "uptime": format_duration(float(info.get("uptime_s", 0)))}
        return self._page("overview.html", request, page="overview", overview=ov, peers=peers,
                          router=router, router_error=error)

    async def timeline(self, request: web.Request) -> web.Response:
        q = request.query
        cluster = query_text(q, "cluster") or None
        host = None if cluster else (query_text(q, "host") or None)
        win = views.window(query_text(q, "window", 20) or None, query_text(q, "since", 40) or None,
                           query_text(q, "until", 40) or None)

        def read(db: sqlite3.Connection) -> tuple[Any, ...]:
            names = data.cluster_names(db)
            # Neither named: the first cluster (a picture of every instance at once is
            # the report's job, not a page's).
            chosen = cluster if cluster or host else (names[0] if names else "")
            tl = data.timeline(db, win.since_ns, win.until_ns, cluster=chosen or None,
                               host=host,
                               resolution_ns=views.resolution(win.since_ns, win.until_ns))
            incs = data.incidents(db, win.since_ns, win.until_ns, chosen or None)
            return tl, incs, names, data.host_names(db), chosen

        tl, incs, clusters, hosts, cluster = await self.reader.read(read)
        base = {"cluster": cluster, "host": host}
        return self._page("timeline.html", request, page="timeline", picture=views.layout(tl),
                          incidents=incs, cluster_names=clusters, host_names=hosts, win=win,
                          base=base)

    async def incident(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        if not 1 <= len(event_id) <= 64:
            raise BadRequest("an event id is 1..64 characters")

        def read(db: sqlite3.Connection) -> tuple[Any, ...]:
            inc = data.incident(db, event_id)
            if inc is None:
                return None, None
            pad = max(5 * 10**9, (inc.end_ns - inc.start_ns) // 5)
            start, end = inc.start_ns - pad, inc.end_ns + pad
            tl = data.timeline(db, start, end, cluster=inc.clusters[0] if inc.clusters else None,
                               host=None if inc.clusters else inc.hosts[0],
                               resolution_ns=views.resolution(start, end))
            return inc, tl

        inc, tl = await self.reader.read(read)
        if inc is None:
            return self._page("error.html", request, status=404, heading="No such event",
                              message=f"no event {event_id!r} in the journal (it may have "
                              "been pruned: [router] keep_events)")
        return self._page("incident.html", request, page="incident", incident=inc,
                          picture=views.layout(tl))

    async def history(self, request: web.Request) -> web.Response:
        q = request.query
        form = {name: query_text(q, name, 100) for name in ("host", "kind", "name", "state", "id")}
        limit = query_int(q, "limit", 50, 1, MAX_LIMIT)
        before = query_int(q, "before", 0, 0, 2**62) or None
        transitions = q.get("transitions") in ("1", "on", "true")
        if form["id"] and not all(c in ID_CHARS for c in form["id"]):
            raise BadRequest("an event id is letters, digits, _ and -")
        filters = data.Filters(host=form["host"] or None, kind=form["kind"] or None,
                               name=form["name"] or None, state=form["state"] or None,
                               event_id=form["id"] or None, transitions=transitions)
        events = await self.reader.read(
            lambda db: data.history(db, filters, limit + 1, before))
        params = {**form, "transitions": "1" if transitions else "", "limit":
                  str(limit) if limit != 50 else ""}
        return self._page("history.html", request, page="history", events=events[:limit],
                          more=len(events) > limit, form={**form, "limit": limit,
                                                          "transitions": transitions},
                          params=params, filtered=any(form.values()) or transitions)

    # -- live, login, health ---------------------------------------------------------------

    async def live(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue = self.hub.join()
        try:
            await response.write(b"retry: 2000\n: connected\n\n")
            while True:
                try:
                    line = await asyncio.wait_for(queue.get(), PING_S)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if not line:
                    break
                await response.write(b"data: " + line + b"\n\n")
        except (ConnectionResetError, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # this page's stream ends; the others and the server go on
            self.stats["errors"] += 1
            self.log.exception("web.live_stream_failed")
        finally:
            self.hub.leave(queue)
        return response

    async def login(self, request: web.Request) -> web.Response:
        auth = self.settings.auth
        token = request.query.get("token", "")
        if not auth.token or not auth.allows(f"Bearer {token}", None):
            self.stats["refused"] += 1
            return web.Response(status=401, text="wrong or missing token\n")
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, auth.cookie_value(), httponly=True, samesite="Strict",
                            secure=request.secure, path="/")
        raise response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, **self.stats, "live": self.hub.info()})


async def serve(settings: WebSettings, log: Any, ready: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or the task is cancelled)."""
    webapp = Web(settings, log)
    runner = web.AppRunner(webapp.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    try:
        await site.start()
        url = f"http://{settings.host if ':' not in settings.host else '[' + settings.host + ']'}" \
              f":{_bound_port(runner, settings.port)}/"
        log.info("web.listening", url=url, journal=settings.journal,
                 auth="token" if settings.auth.token else "users" if settings.auth.users
                 else "none (loopback only)")
        if ready is not None:
            ready(url)
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return default
