"""The supervisor of the router's background tasks, and systemd's notify protocol.

In-process, on a real asyncio loop: the tasks here are small coroutines that die or
stop turning on purpose (the faults a real loop could have are unknown bugs, which no
real input can be relied on to produce). The notify datagrams go to a real AF_UNIX
datagram socket, as systemd's would.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from knotify import sdnotify
from knotify.supervisor import CRASH_WINDOW, GRACE, MAX_CRASHES, Faults, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


def _log() -> Any:
    return structlog.get_logger("test")


def test_faults_are_counted_every_time_and_logged_once_per_signature(
    captured: list[dict[str, Any]]
) -> None:
    clock = Clock()
    faults = Faults(_log(), clock)

    def boom(n: int) -> None:
        raise ValueError(f"bad {n}")

    for n in range(5):
        try:
            boom(n)
        except ValueError as exc:
            assert faults.record("message", exc) == f"ValueError: bad {n}"
    assert faults.counts["message"] == 5
    lines = [r for r in captured if r["event"] == "router.fault"]
    assert len(lines) == 1
    assert lines[0]["where"] == "message" and "Traceback" in lines[0]["traceback"]
    clock.now += 11
    try:
        boom(9)
    except ValueError as exc:
        faults.record("message", exc)
    lines = [r for r in captured if r["event"] == "router.fault"]
    assert len(lines) == 2
    assert lines[1]["repeated_since_last_line"] == 4
    assert lines[1]["traceback"] is None  # the traceback was logged the first time


def test_a_task_that_dies_is_restarted_loudly_and_counted(
    captured: list[dict[str, Any]]
) -> None:
    async def main() -> dict[str, Any]:
        fatal: list[str] = []
        sup = Supervisor(_log(), Faults(_log()), fatal.append)
        runs = []

        async def work() -> None:
            runs.append(1)
            sup.beat("worker")
            if len(runs) < 3:
                raise RuntimeError(f"crash {len(runs)}")
            await asyncio.sleep(3600)

        sup.spawn("worker", work, 1.0)
        for _ in range(100):
            if len(runs) >= 3:
                break
            await asyncio.sleep(0.1)
        view = sup.view()["worker"]
        await sup.stop()
        assert fatal == []
        return view

    view = asyncio.run(main())
    assert view["restarts"] == 2 and view["running"] is True
    assert view["last_error"] == "RuntimeError: crash 2"
    crashed = [r for r in captured if r["event"] == "task.crashed"]
    assert [r["error"] for r in crashed] == ["RuntimeError: crash 1", "RuntimeError: crash 2"]
    assert all(r["log_level"] == "critical" for r in crashed)


def test_a_loop_that_returns_is_a_crash_too(captured: list[dict[str, Any]]) -> None:
    async def main() -> None:
        sup = Supervisor(_log(), Faults(_log()), lambda reason: None)
        done = asyncio.Event()

        async def work() -> None:
            done.set()

        sup.spawn("quitter", work)
        await done.wait()
        await asyncio.sleep(0.05)
        await sup.stop()

    asyncio.run(main())
    [line] = [r for r in captured if r["event"] == "task.crashed"]
    assert line["task"] == "quitter" and "returned" in line["error"]


def test_a_task_that_keeps_dying_stops_the_router(captured: list[dict[str, Any]]) -> None:
    async def main() -> tuple[list[str], int]:
        fatal: list[str] = []
        clock = Clock()
        sup = Supervisor(_log(), Faults(_log()), fatal.append, clock)
        runs = []

        async def work() -> None:
            runs.append(1)
            clock.now += 1  # the crashes are MAX_CRASHES within the window
            raise OSError("the lock file is a directory")

        import knotify.supervisor as supmod

        old = supmod.FIRST_BACKOFF
        supmod.FIRST_BACKOFF = 0.001
        try:
            sup.spawn("fifo", work)
            for _ in range(200):
                if fatal:
                    break
                await asyncio.sleep(0.02)
        finally:
            supmod.FIRST_BACKOFF = old
        await sup.stop()
        return fatal, len(runs)

    fatal, runs = asyncio.run(main())
    assert runs == MAX_CRASHES
    assert len(fatal) == 1 and "the fifo loop died 5 times" in fatal[0]
    assert "lock file is a directory" in fatal[0]
    [line] = [r for r in captured if r["event"] == "task.failing"]
    assert line["log_level"] == "critical" and line["within_s"] == CRASH_WINDOW


def test_periodic_ticks_are_boundaries_and_loops_that_stop_turning_are_stale(
    captured: list[dict[str, Any]]
) -> None:
    async def main() -> tuple[list[Any], list[Any], dict[str, Any], int]:
        clock = Clock()
        faults = Faults(_log(), clock)
        sup = Supervisor(_log(), faults, lambda reason: None, clock)
        ticks: list[int] = []

        def tick() -> None:
            ticks.append(1)
            if len(ticks) == 2:
                raise KeyError("one bad turn")

        sup.every("flush", 0.01, tick)
        waiting = asyncio.Event()
        idle = [True]

        async def serve() -> None:
            sup.beat("serve")
            await waiting.wait()

        sup.spawn("serve", serve, 1.0, idle=lambda: idle[0])
        for _ in range(100):
            if len(ticks) >= 4:
                break
            await asyncio.sleep(0.01)
        fresh = sup.stale()
        clock.now += GRACE + 5  # nothing turned for a long while (by this clock)
        idle[0] = False  # and the socket has messages waiting
        stale = sup.stale()
        view = sup.view()
        await sup.stop()
        return fresh, stale, view, faults.counts["flush"]

    fresh, stale, view, flush_faults = asyncio.run(main())
    assert fresh == []
    assert sorted(name for name, _ in stale) == ["flush", "serve"]
    assert flush_faults == 1 and view["flush"]["restarts"] == 0, "the loop went on"
    assert view["flush"]["last_error"] == "KeyError: 'one bad turn'"


def test_an_idle_socket_loop_is_not_stale() -> None:
    async def main() -> list[Any]:
        clock = Clock()
        sup = Supervisor(_log(), Faults(_log()), lambda reason: None, clock)
        async def serve() -> None:
            await asyncio.Event().wait()

        sup.spawn("serve", serve, 1.0, idle=lambda: True)
        await asyncio.sleep(0.01)
        clock.now += 3600
        stale = sup.stale()
        await sup.stop()
        return stale

    assert asyncio.run(main()) == []


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def test_sd_notify_sends_one_datagram(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert sdnotify.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert sdnotify.notify("READY=1", {}) is False


def test_sd_notify_abstract_socket() -> None:
    name = f"knotify-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert sdnotify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_watchdog_interval_is_half_the_period_and_only_for_us() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000",
                                       "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
