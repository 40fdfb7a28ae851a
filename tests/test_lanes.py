"""tests/lanes.py, the two pytest processes of `make test`: lane B waits for lane A's fixture records, fails with the
reason when a build failed or lane A ended without one, and takes one thread while a build is pending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import _pytest.outcomes
import pytest

from tests import fixture_builds, lanes


def test_lane_b_waits_for_the_record_lane_a_writes(tmp_path):
    record = fixture_builds.record_path(tmp_path, "trained")
    timer = threading.Timer(0.7, lambda: record.write_text(json.dumps("/x/model.nemo")))
    timer.start()
    started = time.monotonic()
    assert lanes.await_record(tmp_path, "trained", timeout=30) == "/x/model.nemo"
    assert time.monotonic() - started >= 0.5
    timer.join()


def test_a_failed_build_or_an_ended_lane_a_fails_lane_b_at_once_with_the_reason(tmp_path):
    (tmp_path / "exported.failed").write_text("RuntimeError: korasr export exited 1", encoding="utf-8")
    with pytest.raises(_pytest.outcomes.Failed, match="korasr export exited 1"):
        lanes.await_record(tmp_path, "exported", timeout=30)
    (tmp_path / lanes.LANE_A_DONE).write_text("1", encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(_pytest.outcomes.Failed, match="lane A ended without building the trained fixture"):
        lanes.await_record(tmp_path, "trained", timeout=30)
    assert time.monotonic() - started < 5


def test_builds_are_pending_until_every_fixture_is_recorded_or_failed(tmp_path):
    assert lanes.builds_pending(tmp_path)
    for name in list(fixture_builds.NEEDS)[:-1]:
        fixture_builds.record_path(tmp_path, name).write_text("{}", encoding="utf-8")
    assert lanes.builds_pending(tmp_path)
    (tmp_path / f"{list(fixture_builds.NEEDS)[-1]}.failed").write_text("x", encoding="utf-8")
    assert not lanes.builds_pending(tmp_path)


def test_a_zombie_or_gone_process_counts_as_ended():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not lanes._ended(child.pid):  # exited, not yet reaped: a zombie
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.wait()
    assert lanes._ended(child.pid) and not lanes._ended(os.getpid())
