"""The hostile soak of issue 9, in the slow set: bench/soak.py for a few minutes.

4 senders of good events (some with clocks a year off), garbage on the control socket
and over CURVE, odd spool files, idle and half-handshaken connections, and SIGKILLs of
the router in between. Checked: every good event journaled exactly once, no action ran
twice, status answered every time it was asked while the router was up, no fault
logged, no unexpected exit. Its figures (status latency, RSS) are the benchmark's
business: ``bench/soak.py`` runs it longer and prints them (bench/README.md).
"""

from __future__ import annotations

import shutil
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_hostile_soak_loses_nothing_and_runs_nothing_twice() -> None:
    import soak

    results = soak.run(duration=150, kill_every=40, rate=20, hostile_spool=True,
                       say=lambda text: None)
    try:
        assert results["problems"] == [], results
        assert results["kills"] >= 2
        assert results["good_sent"] > 1000 and results["actions_recorded"] > 50
        assert results["hostile"].get("garbage_answered", 0) > 100
        assert results["hostile"].get("curve_answered", 0) > 100
        assert results["hostile"].get("idle_tcp_closed", 0) > 100, "handshake timeouts"
        for kind in ("fifo", "dir", "symlink"):
            assert results["hostile"].get(f"spool_{kind}", 0) > 0, kind
    finally:
        shutil.rmtree(results["root"], ignore_errors=True)
