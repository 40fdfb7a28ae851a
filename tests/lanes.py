"""`make test`: the suite in two pytest processes ("lanes") at once, so that no core idles.

Measured on 2026-12-07 (2 cores; tests/idle_profile.py, with the fixtures already built): one pytest
process ran the 536 tests in about 2,350 s with about 1,450 core-seconds idle, a core idle 62% of the time. Most
end-to-end tests are one thread most of their time: NeMo's import, a subprocess starting, a server coming up,
Airflow's task runner, a client waiting for an answer. Lane B takes modules that train or retrain and wait on no clock
of their own (LANE_B: 815 s of those tests, 548 core-seconds idle); it runs niced (LANE_B_NICE), on what lane A
leaves, with one thread while the fixtures build (tests/conftest.py: share_cores). Lane A runs every other module at
the normal priority, so its timed tests (streams in real time, drains, deadlines) come first on the CPU. The trained
fixtures are built once, by lane A's background builders (tests/fixture_builds.py), in a folder both lanes read
(KORASR_TEST_FIXTURES); lane B waits for their records. Lane A's `alone` modules (DDP's ranks step in lockstep) start
only once lane B has ended.

Exit status: 0 when both lanes passed, else the first failing lane's. Each lane prints its own summary (lane B's log
after lane A's).

    python -m tests.lanes [PYTEST_ARGS...]     # make test; extra arguments go to both lanes
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Modules that train or retrain (minutes of mostly one-thread work each) and whose waits are generous: lane B.
LANE_B = (
    "tests/test_airflow.py",
    "tests/test_lifecycle.py",
    "tests/test_train.py",
    "tests/test_shards.py",
    "tests/test_augmentation.py",
)
LANE_B_NICE = 10  # CFS weight 110 against lane A's 1024: about a tenth of a core while both want it
LANE_ENV = "KORASR_TEST_LANE"  # "a" or "b" in a lane; unset when pytest runs directly (one process, every test)
LANE_B_PID = "KORASR_TEST_LANE_B_PID"  # lane A's `alone` modules wait for this process to end
LANE_B_DONE = "lane-b.done"  # in the fixtures folder: lane B's session ended (tests/conftest.py writes it)
LANE_A_DONE = "lane-a.done"  # lane A's session ended (its builders with it): a record missing now never comes


def lane() -> str | None:
    return os.environ.get(LANE_ENV)


def lane_b_done(root: Path) -> None:
    (root / LANE_B_DONE).write_text(str(os.getpid()), encoding="utf-8")


def _ended(pid: int) -> bool:
    """The process is gone or a zombie (lane B is the runner's child: it stays a zombie until lane A ends)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


def await_lane_b(root: Path) -> None:
    """Lane A, before an `alone` module: wait until lane B's session has ended (or its process has)."""
    import time

    pid = int(os.environ.get(LANE_B_PID, "0"))
    start = time.monotonic()
    while pid and not (root / LANE_B_DONE).is_file() and not _ended(pid):
        time.sleep(1)
    if time.monotonic() - start > 1:
        print(f"\n(waited {time.monotonic() - start:.0f} s for lane B)", flush=True)


def builds_pending(root: Path) -> bool:
    """Lane B: lane A's builders (every fixture of tests/fixture_builds.py) are still at work."""
    from tests.fixture_builds import NEEDS, record_path

    return any(not record_path(root, n).is_file() and not (root / f"{n}.failed").is_file() for n in NEEDS)


def await_record(root: Path, name: str, timeout: float = 3600) -> object:
    """Lane B: the fixture ``name`` once lane A's builder has recorded it; a build that failed (``NAME.failed``, its
    reason) or a lane A that ended without it fails the test."""
    import json
    import time

    import pytest

    from tests.fixture_builds import record_path

    deadline = time.monotonic() + timeout
    record, failed = record_path(root, name), root / f"{name}.failed"
    while not record.is_file():
        if failed.is_file():
            pytest.fail(f"lane A's build of the {name} fixture failed:\n{failed.read_text(encoding='utf-8')[-8000:]}")
        if (root / LANE_A_DONE).is_file() and not record.is_file():
            pytest.fail(f"lane A ended without building the {name} fixture (build-*.log in {root})")
        if time.monotonic() > deadline:
            pytest.fail(f"no {record} within {timeout:g} s: lane A's builders (build-*.log in {root}) never wrote it")
        time.sleep(0.5)
    return json.loads(record.read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    own = os.environ.get("KORASR_TEST_FIXTURES")  # a developer's kept fixtures: used, never removed
    root = Path(own) if own else Path(tempfile.mkdtemp(prefix="korasr-fixtures-"))
    root.mkdir(parents=True, exist_ok=True)
    for done in (LANE_A_DONE, LANE_B_DONE):
        (root / done).unlink(missing_ok=True)
    env = {**os.environ, "KORASR_TEST_FIXTURES": str(root)}
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    log = root / "lane-b.log"
    with open(log, "wb") as out:
        lane_b = subprocess.Popen(
            ["nice", "-n", str(LANE_B_NICE), *pytest, "--durations=15", *argv, *LANE_B],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, process_group=0,
            env={**env, LANE_ENV: "b"},
        )  # fmt: skip
    ignore = [f"--ignore={module}" for module in LANE_B]
    print(f"lane B ({len(LANE_B)} modules, nice {LANE_B_NICE}) runs beside this one: {log}", flush=True)
    try:
        rc_a = subprocess.call([*pytest, "--durations=30", *argv, *ignore], cwd=ROOT,
                               env={**env, LANE_ENV: "a", LANE_B_PID: str(lane_b.pid)})  # fmt: skip
        (root / LANE_A_DONE).write_text(str(rc_a), encoding="utf-8")
        rc_b = lane_b.wait()
    finally:
        if lane_b.poll() is None:  # lane A was interrupted: lane B stops with it
            os.killpg(lane_b.pid, 15)
            lane_b.wait()
    print(f"\n===== lane B ({' '.join(m.removeprefix('tests/') for m in LANE_B)}) =====", flush=True)
    sys.stdout.write(log.read_text(encoding="utf-8", errors="replace"))
    print(f"\nlane A exited {rc_a}, lane B exited {rc_b}", flush=True)
    if not own and rc_a == 0 and rc_b == 0:
        shutil.rmtree(root, ignore_errors=True)
    return rc_a or rc_b


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
