"""`korasr serve`: a FastAPI transcription service over an export directory (onnxruntime; no torch, no NeMo).

Routes: ``POST /v1/transcribe`` (multipart ``audio``), ``POST /v1/audio/transcriptions`` (OpenAI's audio API:
``file``, ``model``, ``response_format`` json | text | verbose_json), ``GET /health`` (ready once the model is
loaded and a warm-up inference passed), ``GET /metrics`` (Prometheus), ``GET /`` (a page to upload or record),
``/docs`` (OpenAPI), and ``GET /v1/stream`` (a WebSocket: 16-bit PCM in, partial and final results out; an export
of a streaming model, ``streams.py``), and asynchronous jobs for long audio: ``POST /v1/jobs``, ``GET``/``DELETE
/v1/jobs/{id}``, ``GET /v1/jobs/{id}/result`` (a database and a spool in the jobs folder, signed callbacks,
``jobs/``).

Bounded under hostile input (every limit is a field of :class:`ServeConfig`): the gate (``gate.py``) checks the
API key and admits at most ``queue_size`` transcription requests before a body is read; uploads are limited in
bytes while they stream and in time; audio is probed from its container header and decoded in blocks under the
duration, rate and channel limits (``korasr.runtime.audio``); the batcher (``batcher.py``) decodes long audio in
chunks under a padded-seconds budget, and a failure fails only its own request.

SIGTERM drains the server (``drain.py``): readiness off, new work refused with 503, what it holds finished or its
jobs released, then exit 0, within ``drain_timeout_s``. ``log_format`` json: one JSON line per request and per other
record on stdout, under the request's ``X-Request-Id`` (``logs.py``). With ``--workers N`` a scrape of ``/metrics``
adds up every worker's counts, whichever worker answers it (``metrics.py``).
"""

from __future__ import annotations

import os
import sys

from korasr.serve.app import ClientError, create_app, decode_upload
from korasr.serve.config import ENV, ServeConfig

__all__ = ["ClientError", "ServeConfig", "app_from_env", "create_app", "decode_upload", "serve"]


def app_from_env():  # type: ignore[no-untyped-def]
    """The ASGI app for `uvicorn --factory korasr.serve:app_from_env` (one per worker process)."""
    return create_app(ServeConfig.from_env())


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    import uvicorn

    from korasr.serve.drain import Supervisor
    from korasr.serve.logs import uvicorn_log_config
    from korasr.serve.metrics import MULTIPROC_ENV, worker_metrics_dir

    # ws_max_size: a larger WebSocket frame is refused (1009) before it is buffered. No keepalive pings: a client's
    # pong waits behind the audio the server is not reading yet (backpressure), so a client sending a file faster
    # than real time would be closed (1011) at the ping timeout; the idle, pace and send-deadline rules bound what
    # pings would catch (a dead peer, a client that stops reading).
    options: dict = {"host": host, "port": port, "ws_max_size": config.max_frame_bytes, "ws_ping_interval": None}
    if config.log_format == "json":  # one JSON line per record on stdout; the gate writes the requests' records
        options.update(log_config=uvicorn_log_config(), access_log=False)
    if config.canary is not None and workers > 1:  # checked before the workers start (one worker: create_app checks)
        from korasr.serve.canary import load_manifest

        load_manifest(config.canary, max_rows=config.canary_max_rows, max_audio_seconds=config.max_audio_seconds)
    if workers > 1:  # each worker drains on SIGTERM; the supervisor passes it (and a second one) on
        os.environ[ENV] = config.to_env()  # every field, so no worker runs with a default the user overrode
        server = uvicorn.Config("korasr.serve:app_from_env", factory=True, workers=workers, **options)
        with worker_metrics_dir():  # a scrape of any worker counts them all (metrics.py)
            Supervisor(server, sockets=[server.bind_socket()]).run()
    else:  # one process, one in-process registry: a multiprocess folder named by the environment is not used (unless
        # prometheus_client, imported already, has chosen it)
        if "prometheus_client" not in sys.modules:
            os.environ.pop(MULTIPROC_ENV, None)
        uvicorn.run(create_app(config), **options)
