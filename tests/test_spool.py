"""The spool: a sequence that only grows across processes, atomic files, ordered replay."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from knotify import spool


def _take(args: tuple[str, int]) -> list[int]:
    spool_dir, count = args
    return [spool.next_seq(spool_dir) for _ in range(count)]


def test_next_seq_starts_at_one_and_counts(tmp_path: Path) -> None:
    d = str(tmp_path / "spool")
    assert [spool.next_seq(d) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert (tmp_path / "spool" / "seq").read_bytes() == b"%020d\n" % 5


def test_next_seq_is_strictly_increasing_across_8_processes(tmp_path: Path) -> None:
    d = str(tmp_path / "spool")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        results = pool.map(_take, [(d, 200)] * 8)
    for got in results:
        assert len(got) == 200
        assert all(a < b for a, b in itertools.pairwise(got)), "must only grow"
    every = sorted(n for got in results for n in got)
    assert every == list(range(1, 1601)), "no number handed out twice, none skipped"


def test_next_seq_survives_a_corrupt_counter(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    d.mkdir()
    (d / "seq").write_bytes(b"garbage\n")
    assert spool.next_seq(str(d)) == 1
    (d / "seq").write_bytes(b"")
    assert spool.next_seq(str(d)) == 1
    (d / "seq").write_bytes(b"41\n")
    assert spool.next_seq(str(d)) == 42


def test_next_seq_is_zero_when_the_folder_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # Tests run as root, so permissions would not stop us: a path below a file does.
    assert spool.next_seq(str(blocker / "spool")) == 0
    assert spool.next_seq(str(blocker)) == 0
    assert blocker.read_text() == "not a folder"


def test_next_seq_is_zero_when_the_counter_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "seq").mkdir()
    assert spool.next_seq(str(tmp_path)) == 0


def _event(seq: int | None, ident: str, **extra: object) -> dict[str, object]:
    event: dict[str, object] = {"v": 1, "id": ident, "host": "kb1", "kind": "INSTANCE",
                                "name": "VI_1", "state": "MASTER", "source": "hook", **extra}
    if seq is not None:
        event["seq"] = seq
    return event


def test_write_puts_a_complete_file_in_new_and_nothing_in_tmp(tmp_path: Path) -> None:
    d = str(tmp_path / "spool")
    event = _event(7, "a" * 32, name="a'b\"c\n$(id)", argv=[os.fsdecode(b"\xff")])
    path = spool.write(d, event)
    assert path == os.path.join(d, "new", f"{7:020d}-{'a' * 32}.json")
    assert os.listdir(os.path.join(d, "tmp")) == []
    assert json.loads(Path(path).read_bytes()) == event


def test_write_refuses_to_overwrite_the_same_event_in_tmp(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    (d / "tmp").mkdir(parents=True)
    (d / "tmp" / spool.file_name(_event(1, "b" * 32))).write_text("half")
    with pytest.raises(FileExistsError):
        spool.write(str(d), _event(1, "b" * 32))


def test_write_below_a_file_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(OSError):
        spool.write(str(blocker / "spool"), _event(1, "c" * 32))


def test_file_names_sort_by_seq(tmp_path: Path) -> None:
    d = str(tmp_path / "spool")
    for seq, ident in [(10, "z" * 8), (9, "y" * 8), (100, "a" * 8), (2, "m" * 8)]:
        spool.write(d, _event(seq, ident))
    names = [os.path.basename(p) for p in spool.pending(d)]
    assert [int(n.split("-")[0]) for n in names] == [2, 9, 10, 100]


def test_file_name_without_a_usable_seq_is_zero() -> None:
    assert spool.file_name(_event(None, "q" * 8)) == f"{0:020d}-{'q' * 8}.json"
    assert spool.file_name({**_event(None, "q" * 8), "seq": "5"}).startswith("0" * 20)


def test_pending_limit_depth_and_missing_folder(tmp_path: Path) -> None:
    d = str(tmp_path / "spool")
    assert spool.pending(d) == [] and spool.depth(d) == 0
    for seq in range(1, 6):
        spool.write(d, _event(seq, f"id{seq:06d}"))
    (tmp_path / "spool" / "new" / "ignored.tmp").write_text("x")
    assert spool.depth(d) == 5
    assert [os.path.basename(p)[:20] for p in spool.pending(d, limit=2)] == [
        f"{1:020d}", f"{2:020d}"]
    assert len(spool.pending(d)) == 5


def test_read_skips_vanished_files_and_remove_is_idempotent(tmp_path: Path) -> None:
    d = str(tmp_path / "spool")
    paths = [spool.write(d, _event(seq, f"ev{seq:06d}")) for seq in (1, 2, 3)]
    os.unlink(paths[1])
    got = list(spool.read(paths))
    assert [p for p, _ in got] == [paths[0], paths[2]]
    assert json.loads(got[1][1])["seq"] == 3
    spool.remove(paths)
    spool.remove(paths)
    assert spool.pending(d) == []


def test_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """While a writer spools big events, every file a reader lists is complete JSON."""
    d = str(tmp_path / "spool")
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()
    ctx = multiprocessing.get_context("fork")
    reading = ctx.Event()  # the reader has read files: the writers may write their second half

    def reader() -> None:
        while not stop.is_set():
            for path, content in spool.read(spool.pending(d)):
                try:
                    json.loads(content)
                except ValueError:
                    problems.append(path)
                seen.add(path)
            if seen:
                reading.set()

    thread = threading.Thread(target=reader)
    thread.start()
    procs = [ctx.Process(target=_write_many, args=(d, w, reading)) for w in range(4)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * 4
        # The reader goes on until it has read every file at least once.
        wait_for(lambda: len(seen) == 4 * 25, 60, what="the reader to read every file")
    finally:
        stop.set()
        thread.join(10)
    assert problems == []
    assert seen == set(spool.pending(d)) and spool.depth(d) == 4 * 25
    assert os.listdir(os.path.join(d, "tmp")) == []


def _write_many(spool_dir: str, worker: int, reading: Any) -> None:
    for i in range(25):
        if i == 12:  # the second half is written while the reader reads
            assert reading.wait(60)
        seq = spool.next_seq(spool_dir)
        spool.write(spool_dir, _event(seq, f"w{worker}-{i:04d}-xx", pad="p" * 200_000))
