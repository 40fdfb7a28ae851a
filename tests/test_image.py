"""The service image, built and run for real: `make image LOCAL_BASE=1` (its base from Debian's mirror: no image
registry can be reached here) with podman, then the image serving a trained export mounted at /model on the host's
network, its transcripts compared with `korasr transcribe` on the same files, and its stop: SIGTERM drains it and it
exits 0. The image is built once per test session (the base once per machine); skipped where podman cannot run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import IMAGE_BUILD, ROOT, eval_rows, korasr_cmd

CONTAINERS_ENV = {
    "CONTAINERS_CONF": str(ROOT / "deploy" / "podman" / "containers.conf"),
    "CONTAINERS_STORAGE_CONF": str(ROOT / "deploy" / "podman" / "storage.conf"),
}
NAME = "localhost/korasr-test"  # not the name `make image` gives by default: a person's own images are left alone
KEY = "image-test-key"
# The tag `make image` prints last, then the image's size: nothing else on that line.
LAST_LINE = re.compile(
    r"^(?P<tag>\S+:(?P<version>\d+\.\d+\.\d+)-(?P<revision>[0-9a-f]{12}(?:-dirty)?)) (?P<mb>\d+) MB$"
)
# The aim for the service image, uncompressed (docs/deploy.md compares it with what else a user would pull).
MAX_IMAGE_MB = 500


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], env={**os.environ, **CONTAINERS_ENV}, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert not check or proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def image() -> dict:
    """`make image LOCAL_BASE=1` (started as the session started, conftest.py): the tag and size from its last line,
    and its inspection."""
    if "skip" in IMAGE_BUILD:
        pytest.skip(IMAGE_BUILD["skip"])
    proc = IMAGE_BUILD["proc"]
    stdout, _ = proc.communicate(timeout=1500)
    stderr = IMAGE_BUILD["log"].read_text(errors="replace")
    assert proc.returncode == 0, stderr[-4000:]
    last = stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, f"make image's last line is not 'TAG SIZE': {last!r}"
    inspect = json.loads(podman("image", "inspect", match["tag"]).stdout)[0]
    # this test's images of earlier commits: untagged and removed (vfs keeps each one whole, ~0.5 GB)
    for ref in podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={NAME}").stdout.split():
        if ref.startswith(f"{NAME}:") and ref not in (match["tag"], f"{NAME}:{match['version']}"):
            podman("untag", ref, ref, check=False)
    podman("image", "prune", "--force", "--filter", "label=org.opencontainers.image.title=korasr", check=False)
    return {**match.groupdict(), "inspect": inspect, "stderr": stderr}


def test_make_image_tags_with_the_version_and_commit_and_prints_its_size(image) -> None:
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]  # type: ignore[index]
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert image["version"] == version
    assert image["revision"].removesuffix("-dirty") == head.stdout.strip()
    labels = image["inspect"]["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == image["revision"]
    assert image["inspect"]["Size"] / 1e6 == pytest.approx(int(image["mb"]), abs=1)
    assert int(image["mb"]) <= MAX_IMAGE_MB, f"the service image is {image['mb']} MB (aim: ≤ {MAX_IMAGE_MB})"


def test_the_image_runs_as_a_user_under_tini_with_a_health_check_and_no_torch(image) -> None:
    config = image["inspect"]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"][:2] == ["tini", "--"]
    assert image["inspect"]["Healthcheck"]["Test"] == ["CMD", "korasr-healthcheck"]  # kept: built in the docker format
    assert config["StopSignal"] in ("SIGTERM", "15")
    probe = podman("run", "--rm", "--entrypoint", "python", image["tag"], "-c",
                   "import importlib.util as u, os; print(os.getuid(), [m for m in ('torch', 'nemo', 'pip') if u.find_spec(m)])")  # fmt: skip
    assert probe.stdout.split(None, 1) == ["10001", "[]\n"]


@pytest.fixture
def model_dir(exported, tmp_path) -> Path:
    """The export, readable by the image's user (uid 10001): pytest's own folders are root's alone."""
    model = tmp_path / "model"
    shutil.copytree(exported, model)
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_audio(url: str, path: str, timeout: float = 60) -> tuple[int, dict | str]:
    boundary = uuid.uuid4().hex
    data = Path(path).read_bytes()
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    request = urllib.request.Request(url + "/v1/transcribe", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {KEY}"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def test_the_image_serves_an_export_as_korasr_transcribe_reads_it_and_drains_on_sigterm(
    image, model_dir, recipe
) -> None:
    rows = eval_rows(recipe, 6)
    files = [row["audio_filepath"] for row in rows]
    local = subprocess.run(korasr_cmd("transcribe", "--model", str(model_dir), "--json", *files), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    expected = [json.loads(line)["text"] for line in local.stdout.splitlines() if line.startswith("{")]
    assert len(expected) == len(files)

    port, name = free_port(), f"korasr-test-{uuid.uuid4().hex[:8]}"
    podman("run", "--detach", "--name", name, "--network", "host", "--volume", f"{model_dir}:/model:ro",
           "--env", f"KORASR_PORT={port}", "--env", f"KORASR_API_KEY={KEY}", image["tag"],
           "--drain-timeout", "20")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            state = json.loads(podman("inspect", name).stdout)[0]["State"]
            assert state["Running"], podman("logs", name, check=False).stdout[-3000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the container was not ready within 180 s"
            time.sleep(0.5)
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        served = [post_audio(url, path) for path in files]
        assert [status for status, _ in served] == [200] * len(files), served
        assert [body["text"] for _, body in served] == expected  # type: ignore[index]

        # SIGTERM with requests in flight: each one admitted finishes, then tini passes on korasr serve's exit 0
        results: list[int | str] = []

        def client(path: str) -> None:
            try:
                results.append(post_audio(url, path)[0])
            except urllib.error.URLError as e:  # the listener closed before it connected: never admitted
                results.append("refused" if isinstance(e.reason, ConnectionRefusedError) else repr(e))

        clients = [threading.Thread(target=client, args=(path,)) for path in files]
        for client in clients:
            client.start()
        time.sleep(0.3)
        podman("kill", "--signal", "TERM", name)
        for client in clients:
            client.join(timeout=60)
        exit_code = podman("wait", name, timeout=60).stdout.strip()
        logged = podman("logs", name)
        logs = logged.stdout + logged.stderr
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)
    assert exit_code == "0", logs[-3000:]
    assert len(results) == len(files) and set(results) <= {200, 503, "refused"}, results  # never cut off
    assert KEY not in logs
