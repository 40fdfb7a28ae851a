"""The FastAPI service over the sample model's export: routes, OpenAI shape, formats, hardening, batching."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from fastapi.testclient import TestClient

from korasr.serve import ServeConfig, create_app
from tests.conftest import eval_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(recipe) -> dict:
    row = eval_rows(recipe, 1)[0]
    audio, _ = sf.read(row["audio_filepath"], dtype="float32")
    return {"row": row, "audio": audio, "wav": Path(row["audio_filepath"]).read_bytes()}


@pytest.fixture(scope="module")
def expected(exported, clip) -> str:
    from korasr.runtime import Recognizer

    return Recognizer(exported).transcribe([clip["row"]["audio_filepath"]])[0].text


@pytest.fixture(scope="module")
def client(exported):
    app = create_app(ServeConfig(model=exported, max_upload_bytes=1_000_000, max_audio_seconds=20, api_key=None))
    with TestClient(app) as c:
        yield c


def encode(audio: np.ndarray, rate: int, fmt: str, channels: int = 1) -> bytes:
    data = np.stack([audio] * channels, axis=1) if channels > 1 else audio
    buffer = io.BytesIO()
    sf.write(buffer, data, rate, format=fmt)
    return buffer.getvalue()


def test_health_transcribe_and_segments(client, clip, expected):
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/v1/transcribe", files={"audio": ("a.wav", clip["wav"], "audio/wav")}, data={"segments": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == expected and body["text"]
    assert body["duration_s"] == pytest.approx(clip["row"]["duration"], abs=0.01)
    assert body["processing_ms"] > 0 and body["model"] == "export"
    assert [s["word"] for s in body["segments"]] == expected.split()


def test_openai_audio_api_shape(client, clip, expected):
    files = {"file": ("a.wav", clip["wav"], "audio/wav")}
    assert client.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}).json() == {
        "text": expected
    }
    text = client.post("/v1/audio/transcriptions", files=files, data={"response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain") and text.text == expected
    verbose = client.post("/v1/audio/transcriptions", files=files, data={"response_format": "verbose_json"}).json()
    assert verbose["text"] == expected and verbose["language"] == "korean" and verbose["segments"][0]["text"]
    assert [w["word"] for w in verbose["words"]] == expected.split()
    bad = client.post("/v1/audio/transcriptions", files=files, data={"response_format": "srt"})
    assert bad.status_code == 400 and "response_format" in bad.json()["error"]


@pytest.mark.parametrize(("fmt", "rate", "channels"), [("FLAC", 44100, 2), ("OGG", 48000, 1), ("MP3", 22050, 2),
                                                       ("WAV", 24000, 1)])  # fmt: skip
def test_formats_rates_and_channels(client, clip, expected, fmt, rate, channels):
    audio = soxr.resample(clip["audio"], 16000, rate).astype(np.float32)
    r = client.post("/v1/transcribe", files={"audio": (f"a.{fmt.lower()}", encode(audio, rate, fmt, channels))})
    assert r.status_code == 200, r.text
    from korasr.metrics import cer

    # lossy codecs change the audio the model hears a little (telephone-band 8 kHz audio changes it a lot: the
    # sample model, trained on full-band 16 kHz, scored 75% on it, so 8 kHz is checked for duration only, below)
    assert cer([expected], [r.json()["text"]]) <= 15.0, (fmt, r.json()["text"], expected)


def test_telephone_rate_is_accepted(client, clip):
    audio = soxr.resample(clip["audio"], 16000, 8000).astype(np.float32)
    r = client.post("/v1/transcribe", files={"audio": ("a.wav", encode(audio, 8000, "WAV"))})
    assert r.status_code == 200 and r.json()["duration_s"] == pytest.approx(clip["row"]["duration"], abs=0.01)


def test_raw_pcm_needs_its_parameters(client, clip, expected):
    pcm = (clip["audio"] * 32767).astype("<i2").tobytes()
    ok = client.post("/v1/transcribe", files={"audio": ("a.pcm", pcm)},
                     data={"sample_rate": "16000", "channels": "1", "encoding": "s16le"})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["text"] == expected
    assert client.post("/v1/transcribe", files={"audio": ("a.pcm", pcm)}).status_code == 415  # no parameters
    partial = client.post("/v1/transcribe", files={"audio": ("a.pcm", pcm)}, data={"sample_rate": "16000"})
    assert partial.status_code == 400 and "raw PCM" in partial.json()["error"]
    odd = client.post("/v1/transcribe", files={"audio": ("a.pcm", pcm[:-1])},
                      data={"sample_rate": "16000", "channels": "1", "encoding": "s16le"})  # fmt: skip
    assert odd.status_code == 400


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [("empty", b"", 400), ("text", b"this is not audio at all", 415), ("truncated", "wav[:2000]", 400),
     ("garbage RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40, 400)],
)  # fmt: skip
def test_bad_bodies_are_client_errors_with_json(client, clip, name, body, status):
    data = clip["wav"][:2000] if body == "wav[:2000]" else body
    r = client.post("/v1/transcribe", files={"audio": (f"{name}.wav", data)})
    assert r.status_code == status, (name, r.status_code, r.text)
    assert r.json()["error"]


def test_upload_and_duration_limits(client):
    big = client.post("/v1/transcribe", files={"audio": ("big.wav", b"\0" * 1_200_000)})
    assert big.status_code == 413

    def chunks():  # no Content-Length: the limit must hold while the body streams
        for _ in range(30):
            yield b"\0" * 100_000

    chunked = client.post("/v1/transcribe", content=chunks(),
                          headers={"content-type": "multipart/form-data; boundary=x"})  # fmt: skip
    assert chunked.status_code == 413
    long = encode(np.zeros(16000 * 25, dtype=np.float32), 16000, "FLAC")  # 25 s > 20 s, small as FLAC
    r = client.post("/v1/transcribe", files={"audio": ("long.flac", long)})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    missing = client.post("/v1/transcribe")
    assert missing.status_code == 400 and "audio" in missing.json()["error"]


def test_metrics_count_requests_audio_and_batches(client, clip):
    client.post("/v1/transcribe", files={"audio": ("a.wav", clip["wav"])})
    text = client.get("/metrics").text
    assert 'korasr_requests_total{route="/v1/transcribe",status="200"}' in text
    assert "korasr_request_seconds_bucket" in text and "korasr_real_time_factor_bucket" in text
    assert "korasr_in_flight_requests" in text and "korasr_model_info{" in text
    seconds = [line for line in text.splitlines() if line.startswith("korasr_audio_seconds_total")]
    assert float(seconds[0].split()[-1]) > 3.0


def test_api_key_guards_everything_but_health(exported, clip):
    app = create_app(ServeConfig(model=exported, api_key="s3cret"))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/metrics").status_code == 401
        assert c.post("/v1/transcribe", files={"audio": ("a.wav", clip["wav"])}).status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = c.post("/v1/transcribe", files={"audio": ("a.wav", clip["wav"])}, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "getUserMedia" in page.text
    spec = client.get("/openapi.json").json()
    assert {"/v1/transcribe", "/v1/audio/transcriptions", "/health", "/metrics"} <= set(spec["paths"])


def test_concurrent_requests_are_batched_and_a_full_queue_says_503(exported, recipe):
    import httpx

    rows = eval_rows(recipe, 16)
    bodies = [Path(r["audio_filepath"]).read_bytes() for r in rows]
    app = create_app(ServeConfig(model=exported, max_batch=8, max_wait_ms=50, queue_size=64))

    async def scenario():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                responses = await asyncio.gather(*[c.post("/v1/transcribe", files={"audio": ("a.wav", b)})
                                                   for b in bodies])  # fmt: skip
                return responses, list(app.state.korasr["batcher"].batch_sizes)

    responses, sizes = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses)
    assert max(sizes) > 1 and sum(sizes) == 16  # concurrent requests shared decoding batches

    tiny_queue = create_app(ServeConfig(model=exported, max_batch=1, max_wait_ms=0, queue_size=1))

    async def flood():
        async with tiny_queue.router.lifespan_context(tiny_queue):
            transport = httpx.ASGITransport(app=tiny_queue)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await asyncio.gather(*[c.post("/v1/transcribe", files={"audio": ("a.wav", b)})
                                              for b in bodies])  # fmt: skip

    statuses = [r.status_code for r in asyncio.run(flood())]
    assert 503 in statuses and set(statuses) <= {200, 503}
    busy = next(r for r in asyncio.run(flood()) if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and json.loads(busy.text)["error"]


@pytest.fixture(scope="module")
def live_server(exported):
    """The service on a free loopback port, in a thread of this process."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(model=exported)), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_page_uploads_a_file_in_headless_chromium(live_server, clip, expected, tmp_path):
    """The page at / in Debian's Chromium (chromium, chromium-driver): choose a file, transcribe, read the text."""
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("Debian's chromium and chromium-driver are needed (make setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(live_server + "/")
        driver.find_element(By.ID, "file").send_keys(clip["row"]["audio_filepath"])
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "transcript").text.strip())
        assert driver.find_element(By.ID, "transcript").text.strip() == expected
        assert "ms" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
