"""keepalived's notify FIFO, written the way keepalived writes it, read by knotify.

keepalived creates the FIFO, holds it open O_RDWR|O_NONBLOCK and writes one line per
write(); on reload and stop it closes and unlinks it (the reader sees EOF) and a reload
makes a new one. These tests do exactly that with a real FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog
from conftest import KEnv, RouterProcess, wait_for

from knotify.fifo import AsyncFifoReader

LOG_RULE = """
[[rule]]
id = "log-all"
on = "every"
[[rule.action]]
type = "log"
"""


class FakeKeepalivedFifo:
    """The writer side, as keepalived does it (lib/notify.c)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def create(self) -> None:
        os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def write(self, *lines: str) -> None:
        assert self.fd is not None
        for line in lines:
            os.write(self.fd, (line + "\n").encode())

    def close(self, unlink: bool = True) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if unlink and self.path.exists():
            self.path.unlink()


START = ['GROUP "G1" BACKUP 0', 'INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_2" BACKUP 100']
MASTER = ['INSTANCE "VI_2" MASTER 100', 'INSTANCE "VI_1" MASTER 100', 'GROUP "G1" MASTER 0']
AFTER_RELOAD = ['INSTANCE "VI_3" DELETED 100', 'GROUP "G1" MASTER 0']
STOP = ['INSTANCE "VI_1" STOP 100', 'INSTANCE "VI_2" STOP 100', 'GROUP "G1" STOP 0']


def raws(kenv: KEnv) -> list[str]:
    return [e["raw"] for e in reversed(kenv.history())]


def test_router_reads_fifo_in_order_across_reload_and_stop(
    kenv: KEnv, router: RouterProcess
) -> None:
    fifo_path = kenv.root / "vrrp.fifo"
    kenv.write_config(LOG_RULE + f'\n[router]\nfifos = [{{path = "{fifo_path}", '
                      'host = "node1"}]\n')
    ka = FakeKeepalivedFifo(fifo_path)
    # keepalived starts before the router: lines wait in the pipe buffer.
    ka.create()
    ka.write(*START)
    router.start()
    wait_for(lambda: len(kenv.history()) == 3, what="the start-up lines")
    ka.write(*MASTER, 'INSTANCE "VI_1" MASTER_PRIORITY 40',
             'INSTANCE "VI_2" MASTER_RX_LOWER_PRI 100')
    # Reload: close + unlink (EOF), then a new FIFO with new lines before the reader is back.
    ka.close()
    ka.create()
    ka.write(*AFTER_RELOAD)
    wait_for(lambda: len(kenv.history()) == 10, what="lines after the reload")
    ka.write(*STOP)
    ka.close()
    wait_for(lambda: len(kenv.history()) == 13, what="the STOP lines")
    expected = START + MASTER + ['INSTANCE "VI_1" MASTER_PRIORITY 40',
                                 'INSTANCE "VI_2" MASTER_RX_LOWER_PRI 100'] + AFTER_RELOAD + STOP
    assert raws(kenv) == expected
    events = list(reversed(kenv.history()))
    assert all(e["host"] == "node1" and e["source"] == "fifo" for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    states = {(s["kind"], s["name"]): (s["state"], s["prio"]) for s in kenv.status()}
    assert states[("INSTANCE", "VI_1")] == ("STOP", 100)
    assert states[("INSTANCE", "VI_3")] == ("DELETED", 100)
    assert states[("GROUP", "G1")] == ("STOP", 0)
    classes = [e["class"] for e in events]
    assert classes[6:8] == ["notice", "notice"]
    # The router is still fine after keepalived is gone.
    assert router.alive


def test_router_fifo_bad_line_is_journaled_as_invalid_and_reading_goes_on(
    kenv: KEnv, router: RouterProcess
) -> None:
    fifo_path = kenv.root / "vrrp.fifo"
    kenv.write_config(LOG_RULE + f'\n[router]\nfifos = ["{fifo_path}"]\n')
    ka = FakeKeepalivedFifo(fifo_path)
    ka.create()
    router.start()
    ka.write('INSTANCE "VI_1" BACKUP 100', "GARBAGE LINE", 'INSTANCE "VI_1" SOMETHING 100',
             'INSTANCE "VI_1" MASTER 100')
    wait_for(lambda: len(kenv.history()) == 4, what="four lines")
    events = list(reversed(kenv.history()))
    assert [e["class"] for e in events] == ["transition", "invalid", "invalid", "transition"]
    assert "GARBAGE LINE" in events[1]["error"]
    assert "SOMETHING" in events[2]["error"]
    ka.close()


def _fifo_script(kenv: KEnv, fifo_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "knotify.cli", "fifo", "--verbose", str(fifo_path)],
        env=kenv.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fifo_script_catches_stop_lines_written_after_sigterm(
    kenv: KEnv, router: RouterProcess
) -> None:
    fifo_path = kenv.root / "vrrp.fifo"
    kenv.write_config(LOG_RULE)
    router.start()
    ka = FakeKeepalivedFifo(fifo_path)
    ka.create()
    ka.write(*START)
    reader = _fifo_script(kenv, fifo_path)
    wait_for(lambda: len(kenv.history()) == 3, what="the start-up lines")
    # keepalived's shutdown: SIGTERM to the fifo script first, then the STOP lines.
    reader.send_signal(signal.SIGTERM)
    wait_for(lambda: not _pending(reader.pid, signal.SIGTERM), 5,
             what="the reader to have taken the SIGTERM")
    ka.write(*STOP)
    assert reader.wait(5) == 0
    ka.close()
    # The reader has exited: whatever it read is journaled or spooled by now (after
    # SIGTERM it waits only 0.1 s for an ack), and the router replays the spool.
    wait_for(lambda: kenv.spooled() == [] and len(raws(kenv)) >= len(START + STOP), 20,
             what="every line in the journal")
    assert raws(kenv) == START + STOP


def _pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` sent to ``pid`` is still waiting to be delivered (/proc status)."""
    with open(f"/proc/{pid}/status") as fh:
        masks = {k: int(v, 16) for k, _, v in (line.partition(":") for line in fh)
                 if k in ("SigPnd", "ShdPnd")}
    return any(mask & (1 << (sig - 1)) for mask in masks.values())


def test_fifo_script_exits_on_reload_so_only_one_reader_remains(
    kenv: KEnv, router: RouterProcess
) -> None:
    fifo_path = kenv.root / "vrrp.fifo"
    kenv.write_config(LOG_RULE)
    router.start()
    ka = FakeKeepalivedFifo(fifo_path)
    ka.create()
    old = _fifo_script(kenv, fifo_path)
    ka.write('INSTANCE "VI_1" BACKUP 100')
    wait_for(lambda: len(kenv.history()) == 1, what="the first line")
    # keepalived's reload: close + unlink + new FIFO, SIGTERM the old script, start a new one.
    ka.close()
    ka.create()
    old.send_signal(signal.SIGTERM)
    new = _fifo_script(kenv, fifo_path)
    ka.write('INSTANCE "VI_1" MASTER 100', 'GROUP "G1" MASTER 0')
    old.wait(5)
    wait_for(lambda: len(kenv.history()) == 3, what="lines after the reload")
    # A later line, read by the one reader left: once it is journaled, so is anything a
    # reader read before it.
    ka.write('INSTANCE "VI_9" BACKUP 100')
    # (A line whose ack came late is also in the spool until the router replays it.)
    wait_for(lambda: 'INSTANCE "VI_9" BACKUP 100' in raws(kenv) and kenv.spooled() == [],
             what="the later line, and the spool to drain")
    assert raws(kenv) == ['INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100',
                          'GROUP "G1" MASTER 0', 'INSTANCE "VI_9" BACKUP 100'], \
        "each line exactly once"
    new.send_signal(signal.SIGTERM)
    new.wait(5)
    ka.close()


def test_second_fifo_reader_waits_for_the_first(kenv: KEnv, router: RouterProcess) -> None:
    fifo_path = kenv.root / "vrrp.fifo"
    kenv.write_config(LOG_RULE)
    router.start()
    ka = FakeKeepalivedFifo(fifo_path)
    ka.create()
    first = _fifo_script(kenv, fifo_path)
    ka.write('INSTANCE "VI_1" BACKUP 100')
    wait_for(lambda: len(kenv.history()) == 1, what="the first reader to run")
    second = _fifo_script(kenv, fifo_path)
    ka.write(*[f'INSTANCE "VI_{i}" BACKUP 100' for i in range(2, 40)])
    wait_for(lambda: len(kenv.history()) == 39, what="all lines")
    assert first.stdout is not None
    first.send_signal(signal.SIGTERM)
    first.wait(5)
    out, _ = first.communicate()
    assert out.count("acked") == 39, "the first reader read everything; the second waited"
    ka.write('INSTANCE "VI_99" MASTER 100')
    wait_for(lambda: len(kenv.history()) == 40, what="the second reader to take over")
    second.send_signal(signal.SIGTERM)
    out2, _ = second.communicate(timeout=5)
    assert out2.count("acked") == 1
    ka.close()


def test_fifo_script_spools_when_router_is_down(kenv: KEnv, router: RouterProcess) -> None:
    fifo_path = kenv.root / "vrrp.fifo"
    kenv.write_config(LOG_RULE)
    ka = FakeKeepalivedFifo(fifo_path)
    ka.create()
    reader = _fifo_script(kenv, fifo_path)
    ka.write(*START)
    wait_for(lambda: len(kenv.spooled()) == 3, 10, what="three spooled lines")
    reader.send_signal(signal.SIGTERM)
    ka.write(*STOP)
    reader.wait(5)
    ka.close()
    # Even with the router down, the STOP lines written after SIGTERM were kept.
    assert len(kenv.spooled()) == 6
    router.start()
    wait_for(lambda: len(kenv.history()) == 6, what="the spooled lines")
    assert raws(kenv) == START + STOP


def test_hook_that_runs_late_cannot_undo_a_newer_fifo_line(
    kenv: KEnv, router: RouterProcess
) -> None:
    from conftest import BIN

    fifo_path = kenv.root / "vrrp.fifo"
    kenv.write_config(LOG_RULE + f'\n[router]\nfifos = ["{fifo_path}"]\n')
    ka = FakeKeepalivedFifo(fifo_path)
    ka.create()
    router.start()
    ka.write('INSTANCE "VI_1" BACKUP 100')
    wait_for(lambda: len(kenv.history()) == 1, what="the first line")
    # keepalived forks notify_master, then writes the FIFO line; the hook process is
    # slow to run (a busy host): it is forked now but only gets going 0.8 s later...
    late = subprocess.Popen(["/bin/sh", "-c", f'sleep 0.8; exec "{BIN}/knotify-notify" '
                             "master VI_1"], env=kenv.env)
    ka.write('INSTANCE "VI_1" MASTER 100')
    time.sleep(0.2)
    # ...by which time the instance has already moved on.
    ka.write('INSTANCE "VI_1" STOP 100')
    assert late.wait(10) == 0
    wait_for(lambda: len(kenv.history()) == 4, what="the late hook's event")
    events = list(reversed(kenv.history()))
    assert [(e["source"], e["reported"], e["class"]) for e in events] == [
        ("fifo", "BACKUP", "transition"), ("fifo", "MASTER", "transition"),
        ("fifo", "STOP", "transition"), ("hook", "MASTER", "stale")]
    [state] = kenv.status()
    assert state["state"] == "STOP"
    ka.close()


def test_reader_drain_hands_on_waiting_lines_before_the_loop_reads_them(tmp_path: Path) -> None:
    """A resync drains the FIFO first: lines written before keepalived's state dump
    must be stamped before the snapshot's events, however late the loop would read."""
    path = tmp_path / "notify.fifo"
    ka = FakeKeepalivedFifo(path)
    ka.create()
    got: list[str] = []
    seen_at_drain: list[list[str]] = []
    spool = tmp_path / "spool"
    spool.mkdir()

    async def scenario() -> None:
        opened = asyncio.Event()
        reader = AsyncFifoReader(str(path), str(spool), lambda ls: got.extend(x for x, _, _ in ls),
                                 structlog.get_logger(), on_open=opened.set)
        task = asyncio.get_running_loop().create_task(reader.run())
        await asyncio.wait_for(opened.wait(), 10)
        # No await between the write and the drain: the loop's own reader cannot run.
        ka.write('INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100')
        reader.drain()
        seen_at_drain.append(list(got))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    ka.close()
    assert seen_at_drain == [['INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100']]
