"""A pytest plugin that records, per test, its wall time and the machine's idle and busy core-seconds over it (from
/proc/stat), one JSON line each: how tests/lanes.py's split was chosen.

    KORASR_IDLE_PROFILE=/tmp/idle.jsonl .venv/bin/python -m pytest -p tests.idle_profile ...
"""

from __future__ import annotations

import json
import os
import time

import pytest

HZ = os.sysconf("SC_CLK_TCK")


def _cpu() -> tuple[int, int]:
    """All and idle (idle + iowait) jiffies of every core together."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return sum(values), values[3] + values[4]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # type: ignore[no-untyped-def]
    start, (total0, idle0) = time.monotonic(), _cpu()
    yield
    wall, (total1, idle1) = time.monotonic() - start, _cpu()
    idle = (idle1 - idle0) / HZ
    row = {"id": item.nodeid, "wall": round(wall, 2), "idle_core_s": round(idle, 2),
           "busy_core_s": round((total1 - total0) / HZ - idle, 2)}  # fmt: skip
    with open(os.environ.get("KORASR_IDLE_PROFILE", "idle_profile.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
