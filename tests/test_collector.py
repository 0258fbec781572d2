"""The agent's garbage collector once it serves (desktop_agent.assembly rule 4): what was built at start
is frozen out of the collector's sight, and the youngest generation waits for `GC_YOUNG_THRESHOLD`
tracked allocations. Checked in a child process: the collector's settings are the process's."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import REPO

CHILD = """
import gc
from desktop_agent.assembly import GC_YOUNG_THRESHOLD, settle_collector
before = gc.get_threshold()
settle_collector()
after = gc.get_threshold()
print(after[0] == GC_YOUNG_THRESHOLD, after[1:] == before[1:], gc.get_freeze_count() > 1000)
"""


def test_settle_collector_freezes_what_was_built_and_raises_the_young_threshold() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


def test_both_front_ends_settle_the_collector_after_the_engine_starts() -> None:
    # `cortex-agent run` and `cortex-agent tray` each start their engine themselves.
    for front_end in ("desktop_agent/cli.py", "desktop_agent/tray.py"):
        text = (REPO / front_end).read_text()
        assert text.index("await engine.start()") < text.index("settle_collector()"), front_end
