"""Shared fixtures: small corpora in KsponSpeech's layout that the tests write themselves."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests import fixture_builds, lanes

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    """Every MLflow run and registry the tests make (training's logger included) lives in a temporary store, never
    in the checkout's exp/mlflow.db."""
    import os
    import tempfile

    store = Path(tempfile.mkdtemp(prefix="korasr-tests-mlflow-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["KORASR_REGISTRY_CACHE"] = str(store / "registry-cache")
    os.environ["KORASR_JOBS_DIR"] = str(store / "jobs")  # korasr serve's default job store, never the checkout's
    os.environ["KORASR_INIT_TOKENIZERS"] = str(store / "init-tokenizers")  # korasr train --init --keep-tokenizer


IMAGE_BUILD: dict = {}  # the service image's build, started as the session starts (tests/test_image.py)


def pytest_collection_finish(session) -> None:  # type: ignore[no-untyped-def]
    """The trained fixtures and the service image take minutes to build: when collected tests need them, their
    builds start now in the background (modules that need neither run first, pytest_collection_modifyitems) and the
    tests before them run meanwhile."""
    import os
    import shutil
    import tempfile

    if session.config.option.collectonly:
        return
    needed = {f for item in session.items for f in fixture_builds_of(item)}
    if lanes.lane() == "a":  # lane A builds what either lane needs (tests/lanes.py); lane B reads the records
        needed = set(fixture_builds.NEEDS)
    if needed and lanes.lane() != "b":  # the trained fixtures, in the background from now on (tests/fixture_builds.py)
        start_fixture_builds(sorted(needed, key=list(fixture_builds.NEEDS).index))
    if not any("image" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    if not shutil.which("podman") or not shutil.which("mmdebstrap") or os.geteuid() != 0:
        IMAGE_BUILD["skip"] = "podman and mmdebstrap as root are needed (make containers)"
        return
    from tests.test_image import CONTAINERS_ENV, NAME

    log = Path(tempfile.mkdtemp(prefix="korasr-image-")) / "make-image.log"
    with open(log, "wb") as out:
        # -o: the venv the tests run in is taken as set up (make test did it), never reinstalled under them
        # nice: the tests beside it come first (their timings are real time; the build's are not measured)
        IMAGE_BUILD["proc"] = subprocess.Popen(
            ["nice", "-n", "19", "ionice", "-c", "2", "-n", "7", "make", "--no-print-directory", "-s", "image", "LOCAL_BASE=1", f"IMAGE={NAME}", "-o", ".venv/.installed",
             "-o", ".venv/bin/lmplz"], cwd=ROOT, env={**os.environ, **CONTAINERS_ENV}, stdout=subprocess.PIPE,
            stderr=out, text=True, process_group=0)  # fmt: skip
    IMAGE_BUILD["log"] = log


def pytest_sessionfinish(session) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    builders = {proc for proc, _ in FIXTURES.get("builders", {}).values()}
    for proc in (IMAGE_BUILD.get("proc"), *builders):
        if proc is not None and proc.poll() is None:  # the session ended first: the build's whole process group stops
            os.killpg(proc.pid, signal.SIGTERM)
    if lanes.lane() == "b":  # lane A's `alone` modules may start (tests/lanes.py)
        lanes.lane_b_done(fixtures_root())


def korasr_cmd(*args: str) -> list[str]:
    return [str(BIN / "korasr"), *args]


def pcm_bytes(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 3000).astype("<i2").tobytes()


class QuirkyCorpus:
    """A hand-written KsponSpeech tree with every defect data preparation must handle.

    ``expected`` maps each script line to what must become of it: ("row", text) or ("reject", reason).
    """

    def __init__(self, root: Path, scripts_dir: str = "KsponSpeech_scripts"):
        self.root = root
        self.scripts_dir = root / scripts_dir
        self.scripts_dir.mkdir(parents=True)
        self.lines: dict[str, list[bytes]] = {s: [] for s in ("train", "dev", "eval_clean", "eval_other")}
        self.expected: dict[str, list[tuple[str, str]]] = {s: [] for s in self.lines}
        self.audio: dict[str, bytes] = {}

    def add(self, split: str, rel: str, raw: str, expect: tuple[str, str], audio: bytes | str | None = "auto",
            encoding: str = "utf-8", eol: bytes = b"\n") -> None:  # fmt: skip
        self.lines.setdefault(split, [])  # an extra evaluation split (eval_NAME.trn)
        self.expected.setdefault(split, [])
        if audio == "auto":
            audio = pcm_bytes(1.0 + len(self.audio) % 3, seed=len(self.audio))
        if audio is not None:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(audio)
            self.audio[rel] = audio
        self.lines[split].append(f"{rel} :: {raw}".encode(encoding) + eol)
        self.expected[split].append(expect)

    def add_raw_line(self, split: str, line: bytes, expect: tuple[str, str]) -> None:
        self.lines.setdefault(split, [])
        self.expected.setdefault(split, [])
        self.lines[split].append(line)
        self.expected[split].append(expect)

    def write_scripts(self) -> None:
        for split, lines in self.lines.items():
            (self.scripts_dir / f"{split}.trn").write_bytes(b"".join(lines))


def train_rel(n: int) -> str:
    return f"KsponSpeech_01/KsponSpeech_0001/KsponSpeech_{n:06d}.pcm"


def eval_rel(split: str, n: int) -> str:
    return f"KsponSpeech_eval/{split}/KsponSpeech_E{n:05d}.pcm"


@pytest.fixture
def quirky_corpus(tmp_path: Path) -> QuirkyCorpus:
    c = QuirkyCorpus(tmp_path / "KsponSpeech")
    c.add("train", train_rel(1), "o/ b/ (3시)/(세 시)에 보자.", ("row", "3시에 보자"))
    c.add("train", train_rel(2), "어/ 그러니까 저+ 저는 u/ 학생이에요?", ("row", "어 그러니까 저 저는 학생이에요"))
    c.add("train", train_rel(3), "CP949로 쓴 줄이에요", ("row", "CP949로 쓴 줄이에요"), encoding="cp949")
    c.add("train", train_rel(4), "윈도 줄 끝이에요", ("row", "윈도 줄 끝이에요"), eol=b"\r\n")
    odd = pcm_bytes(1.5, seed=99) + b"\x7f"
    c.add("train", train_rel(5), "홀수 바이트 파일", ("row", "홀수 바이트 파일"), audio=odd)
    c.add("train", train_rel(6), "오디오가 없어요", ("reject", "missing audio"), audio=None)
    c.add("train", train_rel(7), "빈 오디오", ("reject", "empty audio"), audio=b"\x01")  # not even one sample
    c.add("train", train_rel(8), "b/ n/ o/", ("reject", "empty transcript"))
    c.add("train", train_rel(9), "()/) 그래", ("reject", "malformed markup"))
    c.add_raw_line("train", b"\xff\xfe\xfd broken :: line\n", ("reject", "undecodable text"))
    c.add_raw_line("train", b"\n", ("reject", "blank script line"))
    c.add_raw_line("train", train_rel(10).encode() + b" no separator here\n", ("reject", "malformed script line"))
    # the same id twice in train, and an eval utterance listed again in train: the eval line wins
    c.add("train", train_rel(11), "첫 번째", ("row", "첫 번째"))
    c.add_raw_line("train", f"{train_rel(11)} :: 두 번째\n".encode(), ("reject", "duplicate utterance id"))
    c.add("dev", "KsponSpeech_05/KsponSpeech_0621/KsponSpeech_620001.pcm", "개발 세트 문장", ("row", "개발 세트 문장"))
    c.add("eval_clean", eval_rel("eval_clean", 1), "(1.5배)/(일 점 오 배) 더 커요", ("row", "1.5배 더 커요"))
    c.add("eval_clean", eval_rel("eval_clean", 2), "(70%)/(칠십 퍼센트) 할인!", ("row", "70% 할인"))
    c.add("eval_other", eval_rel("eval_other", 3), "club/ 가자", ("row", "club 가자"))
    c.add_raw_line(
        "train", f"{eval_rel('eval_other', 3)} :: 평가 문장이 학습에\n".encode(), ("reject", "duplicate utterance id")
    )
    long_audio = pcm_bytes(12.0, seed=7)
    c.add("train", train_rel(12), "긴 문장", ("row", "긴 문장"), audio=long_audio)
    c.add("eval_other", eval_rel("eval_other", 4), "긴 평가 문장", ("row", "긴 평가 문장"), audio=long_audio)
    # no trailing newline on the last line of a script
    c.lines["eval_other"][-1] = c.lines["eval_other"][-1].rstrip(b"\n")
    c.write_scripts()
    return c


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# --- the sample recipe on a reduced budget, shared by the end-to-end tests (train, evaluate, export) -----------


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(korasr_cmd(*args), check=True, capture_output=True, text=True, cwd=ROOT, **kwargs)


FIXTURES: dict = {}  # the background build of the trained fixtures (tests/fixture_builds.py)
# a test module's rank: the last fixture it needs in build order; modules run by rank, so the build overlaps the
# modules that need none of it (pytest's order inside a rank, and inside a module, stays as it was)
RANK = {name: i + 1 for i, name in enumerate(fixture_builds.NEEDS)}


def fixture_builds_of(item) -> set[str]:  # type: ignore[no-untyped-def]
    return {f for f in fixtures_of(item) if f in fixture_builds.NEEDS}


def fixtures_root() -> Path:
    """Where the trained fixtures are built: KORASR_TEST_FIXTURES (a developer's kept copy, or the folder
    tests/lanes.py shares between its lanes), else a temporary folder of this session's."""
    import tempfile

    if "root" not in FIXTURES:
        cache = os.environ.get("KORASR_TEST_FIXTURES")
        FIXTURES["root"] = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="korasr-fixtures-"))
        FIXTURES["root"].mkdir(parents=True, exist_ok=True)
    return FIXTURES["root"]


def fixtures_of(item) -> set[str]:  # type: ignore[no-untyped-def]
    """The fixtures a collected test uses (a parametrized argument of the same name is not one)."""
    callspec = getattr(item, "callspec", None)
    return set(getattr(item, "fixturenames", ())) - set(callspec.params if callspec else ())


def pytest_collection_modifyitems(session, config, items) -> None:  # type: ignore[no-untyped-def]
    ranks: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        # a module marked `alone` runs last, once every build has ended: DDP's processes step in lockstep, and a
        # third busy process on two cores slows every step (2026-12-07: the two-node DDP test took 386 s beside the
        # one-thread build, 93 s alone the day before)
        last = len(RANK) + 1 if item.get_closest_marker("alone") else 0
        ranks[module] = max([ranks.get(module, 0), last, *(RANK.get(f, 0) for f in fixtures_of(item))])
    items.sort(key=lambda item: ranks[item.nodeid.split("::")[0]])  # stable: the order inside a rank is kept


def start_fixture_builds(names) -> None:  # type: ignore[no-untyped-def]
    """Starts tests/fixture_builds.py for ``names`` (and what they are made from), one process per chain
    (fixture_builds.CHAINS), each in its own process group, niced so that the tests running beside them come first."""
    root = fixtures_root()
    FIXTURES.setdefault("builders", {})
    for chain in fixture_builds.chains(names):
        index = next(i for i, c in enumerate(fixture_builds.CHAINS) if chain[-1] in c)
        log = root / f"build-{index + 1}.log"
        with open(log, "ab") as out:  # one core (OMP_NUM_THREADS, fixture_builds.BUILD_THREADS)
            proc = subprocess.Popen(
                ["nice", "-n", str(fixture_builds.CHAIN_NICE[index]), sys.executable, "-m", "tests.fixture_builds",
                 str(root), *chain], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, process_group=0,
                env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        for name in fixture_builds.closure(chain):
            if name in chain or name not in FIXTURES["builders"]:
                FIXTURES["builders"][name] = (proc, log)
    share_cores()


# The builds run in a process group of their own but in this session: a new session is a new scheduler autogroup
# (Linux's sched_autogroup), and between autogroups the CPU is split evenly whatever `nice` says. In this session,
# nice holds, and while a build runs (one thread) the tests' processes take one thread too (OMP_NUM_THREADS, which
# korasr's training and onnxruntime sessions honour): three busy threads on two cores made every step wait on a
# preempted thread (2026-12-07: the notebook's 40 training steps took 476 s beside the build, 56 s alone).
SESSION_THREADS = {"env": os.environ.get("OMP_NUM_THREADS"), "torch": None}


def building() -> bool:
    """A background build is still at work: a builder alive with a fixture of it not yet recorded (in lane B, whose
    builds are lane A's: a fixture neither recorded nor failed)."""
    if lanes.lane() == "b":
        return lanes.builds_pending(fixtures_root())
    root = FIXTURES.get("root")
    return any(proc.poll() is None and not fixture_builds.record_path(root, name).is_file()
               for name, (proc, _) in FIXTURES.get("builders", {}).items())  # fmt: skip


def share_cores() -> None:
    """One thread for the tests' processes while a background build runs, the session's own setting once they have
    ended; switched between tests only, so that one test never mixes the two."""
    busy = building()
    if busy:
        os.environ["OMP_NUM_THREADS"] = "1"
    elif SESSION_THREADS["env"] is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = SESSION_THREADS["env"]
    torch = sys.modules.get("torch")  # this process's own PyTorch, when a test has imported it
    if torch is not None:
        if SESSION_THREADS["torch"] is None:
            SESSION_THREADS["torch"] = torch.get_num_threads()
        torch.set_num_threads(1 if busy else SESSION_THREADS["torch"])


def pytest_runtest_setup(item) -> None:  # type: ignore[no-untyped-def]
    if item.get_closest_marker("alone") and lanes.lane() == "a":
        lanes.await_lane_b(fixtures_root())  # DDP's ranks step in lockstep: the machine to itself
    share_cores()


def built(name: str):  # type: ignore[no-untyped-def]
    """The background build's result for the fixture ``name``, once recorded (started here if no build covers it)."""
    import time

    if lanes.lane() == "b":  # lane A's builders make it (tests/lanes.py)
        return lanes.await_record(fixtures_root(), name)
    while True:
        proc, log = FIXTURES.get("builders", {}).get(name, (None, None))
        if proc is None:
            start_fixture_builds([name])
            continue
        record = fixture_builds.record_path(FIXTURES["root"], name)
        if record.is_file():
            share_cores()  # the build may have ended while this test waited: its body gets both cores
            return json.loads(record.read_text(encoding="utf-8"))
        if proc.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-8000:]
            pytest.fail(f"building the {name} fixture failed (exit {proc.returncode}; {log}):\n{tail}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def recipe() -> dict[str, Path]:
    """The sample recipe's stages on the narrow corpus: tmp, manifests, tokenizer (fixture_builds.build_recipe)."""
    return {key: Path(value) for key, value in built("recipe").items()}


@pytest.fixture(scope="session")
def trained(recipe) -> Path:
    """300 steps on the narrow corpus without augmentation (fixture_builds.build_trained): the .nemo."""
    return Path(built("trained"))


@pytest.fixture(scope="session")
def trained_streaming(recipe) -> Path:
    """The streaming variant, 300 steps (fixture_builds.build_trained_streaming): the .nemo."""
    return Path(built("trained_streaming"))


@pytest.fixture(scope="session")
def exported_streaming(trained_streaming, recipe) -> Path:
    return Path(built("exported_streaming"))


@pytest.fixture(scope="session")
def exported(trained, recipe) -> Path:
    return Path(built("exported"))


def nemo_path(stdout: str) -> Path:
    """`korasr train` prints the final .nemo as its last line."""
    return Path(fixture_builds.nemo_path(stdout))


def train_args(recipe: dict[str, Path], exp: Path, *extra: str) -> list[str]:
    return fixture_builds.train_args({key: str(value) for key, value in recipe.items()}, exp, *extra)


def eval_rows(recipe, n: int | None = None) -> list[dict]:
    lines = (recipe["manifests"] / "eval_clean.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


@contextlib.contextmanager
def serving(config, app=None, send_buffer: int | None = None, **uvicorn_options):  # type: ignore[no-untyped-def]
    """``korasr serve``'s app for ``config`` (or ``app``) on a free loopback port, in a thread of this process: yields
    its URL. ``send_buffer``: the kernel's send buffer of every accepted connection, in bytes (a small one lets a
    client that stops reading fill the server's buffers in a test's time)."""
    import socket
    import threading
    import time

    import uvicorn

    from korasr.serve import create_app

    sock = socket.socket()
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # accepted sockets inherit it
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app or create_app(config), log_level="warning", **uvicorn_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def serve_process(model: Path, log: Path, *args: str, key: str | None = None, healthy: bool = True):  # type: ignore[no-untyped-def]
    """``korasr serve`` as its own process on a free loopback port, everything it prints (uvicorn's access log at
    INFO included) going to ``log``: yields its URL once ``/health`` answers 200 (with ``healthy=False``: once it
    answers at all)."""
    import os
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KORASR_API_KEY": key or ""}
    with open(log, "wb") as out:
        proc = subprocess.Popen(korasr_cmd("serve", "--model", str(model), "--port", str(port), *args), cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError:
                if not healthy:
                    break
                time.sleep(0.2)
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def int16_bytes(audio) -> bytes:  # type: ignore[no-untyped-def]
    """The 16-bit PCM the audio was read from (soundfile's float32 is int16 / 32768): the same samples exactly."""
    import numpy as np

    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()


def receive_all(ws) -> tuple[list[dict], int | None, str]:  # type: ignore[no-untyped-def]
    """Every JSON message of a test client's WebSocket, then its close code and reason."""
    from starlette.websockets import WebSocketDisconnect

    messages = []
    while True:
        try:
            messages.append(ws.receive_json())
        except WebSocketDisconnect as e:
            return messages, e.code, e.reason


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL cluster on loopback for the session (Debian's server binaries; initdb refuses root, so
    its folders belong to ``postgres``): yields a SQLAlchemy URL. Skipped where no PostgreSQL server is installed."""
    import glob
    import socket

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.skip("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    bin_dir = Path(found[-1]).parent
    pytest.importorskip("psycopg")
    base = tmp_path_factory.mktemp("postgres")
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        base.chmod(0o755)
        for parent in base.parents:  # the server must reach its folder
            if parent == Path(parent.anchor):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=100"
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", options,
                    "-w", "start"], check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)  # fmt: skip


def wait_for(what: str, check, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Polls ``check`` until it returns something true (returned), failing with ``what`` after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(interval)
    return result


def slow_upload(url: str):  # type: ignore[no-untyped-def]
    """A /v1/transcribe upload whose body never completes: it holds its admission slot (in flight on whichever worker
    accepted it) until the upload deadline or the socket's close. Returns the socket."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"audio\"; "
                 b'filename="a.wav"\r\n\r\nRIFF')  # fmt: skip
    return sock


# --- Triton (make triton): test_triton, and test_serve's gateway variant -------------------------------------------

VENV_TRITON = ROOT / ".venv-triton"  # make triton


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except OSError as e:
        return getattr(e, "code", 0), str(e)


@contextlib.contextmanager
def tritonserver(repo: Path, tmp: Path, ports: dict | None = None):  # type: ignore[no-untyped-def]
    """tritonserver on loopback over ``repo`` (on ``ports``, default free ones), ready: its ports, process and log."""
    if not (VENV_TRITON / ".installed").is_file():
        pytest.fail(f"{VENV_TRITON}: make triton installs Triton's server (make test does it first)")
    ports = ports or {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = tmp / "tritonserver.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "korasr.triton_server", "--repository", str(repo), "--venv",
                                 str(VENV_TRITON), "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                                 "--metrics-port", str(ports["metrics"])],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, process_group=0)  # fmt: skip
    deadline = time.monotonic() + 120
    while get(f"http://127.0.0.1:{ports['http']}/v2/health/ready")[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"tritonserver never became ready (exit {proc.poll()}):\n{log.read_text()[-6000:]}")
        time.sleep(0.3)
    try:
        yield {**ports, "proc": proc, "log": log, "repository": repo}
    finally:  # the server and its python backend stubs (a SIGKILLed server leaves its stubs running)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture(scope="module")
def triton(exported, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Triton over the suite's export, its CTC step on the python backend."""
    from korasr.triton import write_repository

    tmp = tmp_path_factory.mktemp("triton")
    with tritonserver(write_repository(exported, tmp / "repository", backend="python"), tmp) as server:
        yield server
