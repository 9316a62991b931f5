"""A resync never orders keepalived's state dump before a FIFO line written after it.

The race (seen with real keepalived about once in ten restarts, tests/test_keepalived_reload.py):
the router asks keepalived for its JSON dump just as keepalived stops; keepalived writes
the dump (VI_1 still MASTER in memory), then its ``STOP`` line. The router used to read
every line waiting after the dump as older than the dump, so the stale MASTER came last
and made a ``STOP -> MASTER`` transition. The interleaving cannot be forced with real
keepalived, so ``fake_keepalived`` plays its part: a process named keepalived that owns
the FIFO and the pidfile like keepalived does, and answers the JSON dump signal by writing
the dump and then one more FIFO line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KEnv, RouterProcess, wait_for

from knotify import log as logmod
from knotify import resync
from knotify.fifo import AsyncFifoReader

FAKE = r'''
import json, os, signal, sys, time
fifo, pidfile, dump, signum, after = sys.argv[1:6]
os.mkfifo(fifo, 0o600)
fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)          # as keepalived opens it
os.write(fd, b'INSTANCE "VI_1" BACKUP 100\n')
os.write(fd, b'INSTANCE "VI_1" MASTER 100\n')
state = {"VI_1": 2, "VI_2": 1}                           # VI_2's lines were lost


def on_dump(signo, frame):
    data = [{"data": {"iname": n, "state": s, "effective_priority": 100}} for n, s in
            state.items()]
    with open(dump + ".tmp", "w") as fh:
        json.dump(data, fh)
    os.rename(dump + ".tmp", dump)
    if after:                                             # written just after the dump
        os.write(fd, after.encode() + b"\n")


signal.signal(int(signum), on_dump)
with open(pidfile, "w") as fh:
    fh.write(f"{os.getpid()}\n")
while True:
    time.sleep(1)
'''


@pytest.fixture
def fake_keepalived(kenv: KEnv) -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for proc in made:
        proc.kill()
        proc.wait()


def start_fake(kenv: KEnv, made: list[subprocess.Popen[bytes]], after: str) -> Path:
    script = kenv.root / "keepalived"      # /proc/PID/comm says "keepalived"
    script.write_text(f"#!{sys.executable}\n{FAKE}")
    script.chmod(0o755)
    fifo = kenv.root / "vrrp.fifo"
    made.append(subprocess.Popen([str(script), str(fifo), str(kenv.root / "ka.pid"),
                                  str(kenv.root / "ka.json"), str(resync.json_signal()),
                                  after]))
    return fifo


def write_config(kenv: KEnv, fifo: Path) -> None:
    kenv.write_config(f"""
[[router.fifos]]
path = {json.dumps(str(fifo))}
host = "node1"
resync = true
pidfile = {json.dumps(str(kenv.root / "ka.pid"))}
json_file = {json.dumps(str(kenv.root / "ka.json"))}
""")


def transitions(kenv: KEnv) -> list[tuple[str, str, str, str]]:
    return [(e["name"], e["prev_state"], e["state"], e["source"])
            for e in reversed(kenv.history()) if e["class"] == "transition"]


def test_a_line_written_after_the_dump_is_not_undone_by_it(
        kenv: KEnv, router: RouterProcess,
        fake_keepalived: list[subprocess.Popen[bytes]]) -> None:
    fifo = start_fake(kenv, fake_keepalived, 'INSTANCE "VI_1" STOP 100')
    wait_for(lambda: (kenv.root / "ka.pid").exists(), 10, what="the fake keepalived")
    write_config(kenv, fifo)
    router.start()
    wait_for(lambda: any(r.get("event") in ("resync.done", "resync.skipped")
                         for r in router.records()), 20, what="the resync")
    # VI_1's STOP came after the dump that still said MASTER: the FIFO's word stands.
    # VI_2, which the FIFO never mentioned, is learned from the dump.
    assert transitions(kenv) == [("VI_1", "INIT", "BACKUP", "fifo"),
                                 ("VI_1", "BACKUP", "MASTER", "fifo"),
                                 ("VI_1", "MASTER", "STOP", "fifo"),
                                 ("VI_2", "INIT", "BACKUP", "resync")]
    assert {s["name"]: s["state"] for s in kenv.status()} == {"VI_1": "STOP", "VI_2": "BACKUP"}


def test_a_dump_with_no_line_after_it_reports_every_instance(
        kenv: KEnv, router: RouterProcess,
        fake_keepalived: list[subprocess.Popen[bytes]]) -> None:
    fifo = start_fake(kenv, fake_keepalived, "")
    wait_for(lambda: (kenv.root / "ka.pid").exists(), 10, what="the fake keepalived")
    write_config(kenv, fifo)
    router.start()
    wait_for(lambda: any(r.get("event") == "resync.done" for r in router.records()), 20,
             what="the resync")
    resynced = [(e["name"], e["state"], e["class"]) for e in reversed(kenv.history())
                if e["source"] == "resync"]
    assert resynced == [("VI_1", "MASTER", "repeat"), ("VI_2", "BACKUP", "transition")]


def test_overtaken_names_lines_of_the_window_and_stops_of_this_open() -> None:
    window = ['INSTANCE "VI_1" MASTER 100', 'GROUP "G1" MASTER 0', "garbage line",
              'INSTANCE "VI_4" BACKUP 50']
    this_open = ['INSTANCE "VI_2" STOP 100', 'INSTANCE "VI_3" MASTER 100',
                 'INSTANCE "VI_5" DELETED 100', 'GROUP "G1" STOP 0', *window]
    assert resync.overtaken(window, this_open) == {"VI_1", "VI_4", "VI_2", "VI_5"}
    assert resync.overtaken([], ['INSTANCE "VI_3" MASTER 100']) == set()


def test_reader_marks_what_it_read_since_and_forgets_a_closed_fifo(tmp_path: Path) -> None:
    path = tmp_path / "k.fifo"
    os.mkfifo(path)
    got: list[str] = []

    async def scenario() -> tuple[list[str] | None, ...]:
        reader = AsyncFifoReader(str(path), str(tmp_path), lambda lines: got.extend(
            line for line, _, _ in lines), logmod.get())
        writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        os.write(writer, b'INSTANCE "VI_1" BACKUP 100\n')
        task = asyncio.get_running_loop().create_task(reader.run())
        while reader.mark() is None or not got:
            await asyncio.sleep(0.01)
        mark = reader.mark()
        os.write(writer, b'INSTANCE "VI_1" MASTER 100\n')
        reader.drain()
        since = reader.lines_since(mark)
        this_open = reader.lines_this_open()
        os.close(writer)          # keepalived closes it: EOF
        os.unlink(path)
        while reader.mark() is not None:
            await asyncio.sleep(0.01)
        after_eof = reader.lines_since(mark)
        os.mkfifo(path)
        writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        while reader.mark() is None:
            await asyncio.sleep(0.01)
        after_reopen = reader.lines_since(mark)
        task.cancel()
        os.close(writer)
        return since, this_open, after_eof, after_reopen

    since, this_open, after_eof, after_reopen = asyncio.run(scenario())
    assert since == ['INSTANCE "VI_1" MASTER 100']
    assert this_open == ['INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100']
    assert after_eof is None and after_reopen is None
    assert got == this_open

