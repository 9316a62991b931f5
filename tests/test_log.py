"""Log output: JSON lines written once per event-loop turn, at once for warnings, at exit."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from knotify import log as logmod

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class Out:
    """A stream like sys.stderr whose binary side records every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        outer = self

        class Buffer(io.RawIOBase):
            def write(self, data: Any) -> int:
                outer.writes.append(bytes(data))
                return len(data)

        self.buffer = Buffer()

    def isatty(self) -> bool:
        return False

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in b"".join(self.writes).splitlines()]


@pytest.fixture
def out() -> Out:
    stream = Out()
    logmod.setup("json", "info", stream)  # type: ignore[arg-type]
    return stream


def test_lines_of_one_loop_turn_are_written_together_after_it(out: Out) -> None:
    log = logmod.get(component="t")
    seen_inside: list[int] = []

    async def main() -> None:
        for i in range(3):
            log.info("tick", n=i)
        log.debug("hidden")  # below the level
        seen_inside.append(len(out.writes))
        await asyncio.sleep(0)
        seen_inside.append(len(out.writes))

    asyncio.run(main())
    assert seen_inside == [0, 1]  # nothing during the turn, one write after it
    lines = out.lines()
    assert [line["n"] for line in lines] == [0, 1, 2]
    first = lines[0]
    assert list(first) == ["component", "n", "event", "level", "timestamp"]
    assert (first["component"], first["event"], first["level"]) == ("t", "tick", "info")
    assert ISO_UTC.match(first["timestamp"]), first["timestamp"]
    stamped = time.mktime(time.strptime(first["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(stamped - time.timezone - time.time()) < 5


def test_warnings_and_worse_are_written_at_once_after_what_came_before(out: Out) -> None:
    log = logmod.get()

    async def main() -> None:
        log.info("first")
        log.warning("second", why="x")
        assert [line["event"] for line in out.lines()] == ["first", "second"]
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("third")
        assert out.lines()[-1]["level"] == "error"
        assert "ValueError: boom" in out.lines()[-1]["exception"]

    asyncio.run(main())
    assert len(out.lines()) == 3


def test_lines_outside_a_loop_are_written_at_once(out: Out) -> None:
    logmod.get().info("alone")
    assert [line["event"] for line in out.lines()] == ["alone"]


def test_a_big_turn_is_written_in_pieces(out: Out) -> None:
    log = logmod.get()
    counts: list[int] = []

    async def main() -> None:
        for i in range(2000):
            log.info("bulk", i=i, pad="x" * 100)
        counts.append(len(out.writes))

    asyncio.run(main())
    assert counts[0] >= 2000 * 100 // logmod.FLUSH_BYTES  # written before the turn ended
    assert [line["i"] for line in out.lines()] == list(range(2000))


def test_unwritten_lines_are_written_at_exit() -> None:
    # The loop stops before the turn that would write the line: exit writes it.
    code = (
        "import asyncio\n"
        "from knotify import log\n"
        "log.setup('json', 'info')\n"
        "loop = asyncio.new_event_loop()\n"
        "def late():\n"
        "    log.get().info('last.words', n=1)\n"
        "    loop.stop()\n"
        "loop.call_soon(late)\n"
        "loop.run_forever()\n"
        "loop.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True)
    record = json.loads(proc.stderr.strip().splitlines()[-1])
    assert (record["event"], record["n"]) == ("last.words", 1)


def test_console_lines_are_written_per_loop_turn_too() -> None:
    stream = io.StringIO()
    logmod.setup("console", "info", stream)

    async def main() -> None:
        logmod.get().info("readable", n=1)
        assert stream.getvalue() == ""
        await asyncio.sleep(0)
        assert "readable" in stream.getvalue() and "n=1" in stream.getvalue()

    asyncio.run(main())


def test_emit_writes_what_structlog_would_write(out: Out) -> None:
    log = logmod.get(component="router")
    fields = {"event_id": "e1", "prio": 100, "after_s": None, "argv": ["a", "$(x)"]}

    async def main() -> None:
        log.info("via.structlog", **fields)
        logmod.emit(log, "info", "via.emit", fields)
        logmod.emit(log, "debug", "dropped", fields)  # below the level: nothing
        logmod.emit(log, "warning", "at.once", {"n": 1})
        assert [line["event"] for line in out.lines()] == ["via.structlog", "via.emit",
                                                           "at.once"]

    asyncio.run(main())
    slow, fast, warn = out.lines()
    assert list(slow) == list(fast)  # same keys, same order
    assert {k: v for k, v in slow.items() if k not in ("event", "timestamp")} == {
        k: v for k, v in fast.items() if k not in ("event", "timestamp")}
    assert warn["level"] == "warning"
    assert logmod.enabled(log, "info") and not logmod.enabled(log, "debug")


def test_emit_falls_back_to_structlog_for_console_output() -> None:
    stream = io.StringIO()
    logmod.setup("console", "info", stream)
    log = logmod.get()
    logmod.emit(log, "info", "on.console", {"name": "VI_1"})
    logmod.emit(log, "debug", "hidden", {})
    text = stream.getvalue()
    assert "on.console" in text and "VI_1" in text and "hidden" not in text
    assert logmod.enabled(log, "info") and not logmod.enabled(log, "debug")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_held_lines_are_written_after_the_block_or_dropped_if_it_fails(fmt: str) -> None:
    stream = io.StringIO()
    logmod.setup(fmt, "info", stream)
    log = logmod.get()

    async def main() -> None:
        log.info("before")
        with logmod.held(log):
            log.info("kept")
            logmod.emit(log, "info", "kept.too", {"n": 1})
            log.warning("kept.warning")  # not even a warning gets out early
            log.info("x" * logmod.FLUSH_BYTES)  # nor a full buffer
            assert stream.getvalue() == ""
        with pytest.raises(RuntimeError), logmod.held(log):
            log.info("dropped")
            log.error("dropped.error")
            raise RuntimeError("the commit failed")
        log.info("after")
        await asyncio.sleep(0)

    asyncio.run(main())
    text = stream.getvalue()
    order = [word for word in ("before", "kept", "kept.too", "kept.warning", "after")
             if word in text]
    assert order == ["before", "kept", "kept.too", "kept.warning", "after"]
    assert text.index("before") < text.index("kept.warning") < text.index("after")
    assert "dropped" not in text
