"""Where the pages' figures come from: the journal and the router.

:class:`Reader` runs journal reads in worker threads, each through its own
read-only connection, so a slow query never holds the event loop that feeds the
live updates. :class:`RouterStatus` asks the router for its ``status`` answer at
most every two seconds, and gives up after half a second (the pages say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from knotify import client
from knotify.errors import RouterRefused, RouterUnavailable
from knotify.web import data

T = TypeVar("T")
STATUS_TIMEOUT = 0.5
STATUS_CACHE_S = 2.0


class Reader:
    """Journal reads in worker threads, one read-only connection per thread."""

    def __init__(self, path: str, threads: int = 2) -> None:
        self.path = path
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="knotify-web-db")
        self.local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self.local, "db", None)
        if db is None:
            db = data.connect(self.path)
            self.local.db = db
        return db

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._db())
        except sqlite3.Error:
            db = getattr(self.local, "db", None)
            self.local.db = None
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            raise

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._call, fn)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class RouterStatus:
    """The router's ``status`` answer, asked at most every two seconds."""

    def __init__(self, settings: client.Settings | None) -> None:
        self.settings = settings
        self.at = 0.0
        self.answer: dict[str, Any] | None = None
        self.error = ""
        self._lock = asyncio.Lock()

    async def get(self) -> tuple[dict[str, Any] | None, str]:
        if self.settings is None:
            return None, "not asked"
        async with self._lock:
            if time.monotonic() - self.at > STATUS_CACHE_S:
                try:
                    self.answer = await asyncio.to_thread(
                        client.request, self.settings, "status", STATUS_TIMEOUT)
                    self.error = ""
                except (RouterUnavailable, RouterRefused, OSError,
                        ValueError) as exc:
                    self.answer, self.error = None, str(exc)[:200]
                self.at = time.monotonic()
            return self.answer, self.error
