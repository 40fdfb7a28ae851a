"""`korasr serve`'s app: FastAPI over the onnxruntime runtime (no torch, no NeMo). The routers (``routes/``) share
one :class:`~korasr.serve.state.ServiceState`; in front of them the gate (key, admission, upload deadline), and
around everything the send deadline (``deadline.py``)."""

from __future__ import annotations

import contextlib

from korasr.serve.canary import Canary
from korasr.serve.config import ServeConfig
from korasr.serve.deadline import Service
from korasr.serve.errors import ClientError, decode_upload, install_error_handlers
from korasr.serve.gate import Gate, redact_logs
from korasr.serve.routes import ROUTERS
from korasr.serve.state import ServiceState

__all__ = ["ClientError", "create_app", "decode_upload"]


def create_app(config: ServeConfig) -> Service:
    state = ServiceState(config)
    state.canary = Canary.from_config(state)  # the manifest checked now: a bad one stops the start, naming the row

    @contextlib.asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        keys = (k.get_secret_value() for k in (config.api_key, config.admin_key) if k)
        redact_logs(",".join(keys))  # after the server set up logging
        await state.start()
        state.drain.take_signals()  # SIGTERM drains from now on (drain.py)
        if state.canary is not None:  # after the model is first ready: its first run is on it
            state.canary.start()
        yield
        if state.canary is not None:
            await state.canary.stop()
        await state.stop()

    # max_body_size: FastAPI/Starlette count the body as it streams (chunked uploads too) and answer 413
    app = Service(title="korasr", description=DESCRIPTION, lifespan=lifespan, max_body_size=config.max_upload_bytes)
    app.send_timeout_s, app.send_buffer_bytes = config.send_timeout_s, config.send_buffer_bytes
    app.on_send_timeout = lambda kind: state.metrics.send_timeouts.labels(kind).inc()
    for router in ROUTERS:  # their routes themselves (include_router would nest them, hiding templates from the gate)
        app.router.routes.extend(router.routes)
    app.add_middleware(Gate, config=config, routes=app.router.routes, metrics=state.metrics, state=state)
    install_error_handlers(app)
    app.state.korasr = state
    return app


DESCRIPTION = """Korean speech recognition (FastConformer-CTC, onnxruntime).

With an API key set (KORASR_API_KEY), every route but /health and the page at / needs `Authorization: Bearer KEY`
or `X-API-Key: KEY` (one of them: a request with two key headers gets 400), checked before the body is read; these
docs too, unless the server runs with --public-docs. `/admin/*` (status, reload) takes only the operator key
(KORASR_ADMIN_KEY; without one those routes are off).
Limits: uploads over the size limit get 413 while they stream; audio over the duration limit gets 413 from its
header, before it is decoded; sample rates outside 8–384 kHz, more than 8 channels, empty, truncated or corrupt
bodies get 400, unknown formats 415; more requests in progress than the server admits get 503 with Retry-After,
and a body not complete within the upload deadline 408.

Decoding: greedy CTC (greedy-hangul, whole syllables only, for a jamo model), or beam search with the export's
bundled token n-gram LM (`korasr export --lm`). With beam
search, `/v1/transcribe` takes `hotwords` (one phrase per line, optionally a TAB and a boost) and
`/v1/audio/transcriptions` maps OpenAI's `prompt` to hotwords (phrases separated by commas or lines; ignored by a
greedy server). A phrase with characters the model cannot spell gets 400 naming it.

`/v1/audio/transcriptions` returns utterance segments in `verbose_json` (a pause of `--endpoint-silence` seconds
ends one) and subtitles with `response_format` `srt` or `vtt`.

Every response carries `X-Request-Id`: the client's when it is a token of 1–128 characters `A-Za-z0-9._-`, else one
the server made; with `--log-format json` the server's log has one JSON line per request under that id.

Shutdown (SIGTERM): `/health` turns 503 (`"status": "draining"`) at once, new requests to `/v1/*` get 503 with
Retry-After (send them to another replica), requests already admitted finish, open streams get the finals of the
audio they sent and a close with 1001, running jobs finish or go back to the queue for another replica, all within
`--drain-timeout` seconds.

Asynchronous jobs, for long audio (up to `--job-max-audio-seconds`, 4 h by default): `POST /v1/jobs` with an upload
`file` or a `url` the server allows (`--job-source`), `response_format` as above, optional `callback_url`
(`--callback-allow`), `hotwords` or `prompt`, answers 202 with `{id, status, created_at}` and a Location header;
`GET /v1/jobs/{id}` gives its status (queued, running, succeeded, failed, cancelled), `GET /v1/jobs/{id}/result` its
result (409 until it succeeded), `DELETE /v1/jobs/{id}` cancels a queued job or deletes a finished one. A job belongs
to the API key that made it (another key gets 404); results are kept `--job-retention` seconds. A full queue or a
key's quota gets 429 with Retry-After, a full spool or audio too long 413. Callbacks are signed as Standard Webhooks (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, one signature per configured secret):
verify with the `standardwebhooks` library; the old `X-Korasr-*` headers are also sent for this release.

Live streaming (an export of a model trained with `--streaming`): WebSocket `GET /v1/stream?sample_rate=16000`
(8000–48000 Hz). Send binary frames of 16-bit little-endian mono PCM at that rate, then the text frame
`{"type": "end"}`. The server sends JSON text frames `{"type": "partial" | "final", "text", "start", "end"}` (finals
add `words` with times; utterances end at a pause) and closes with 1000 after the last final. The API key goes in
the `Authorization` or `X-API-Key` header at the handshake or, from a browser, as the subprotocol
`korasr.key.<base64url(KEY)>` beside `korasr` (never in the URL: URLs reach logs); a missing or wrong key is
refused before the upgrade (HTTP 403). Every refusal after it sends `{"type": "error", "error": reason}` and
closes: 1008 bad sample_rate, idle too long, audio arriving slower than `--min-stream-rate` × real time over a
window, or the stream's maximum duration reached (after its finals); 1009 a frame too large; 1007 a frame that is
not PCM or the end message; 1013 too many streams open; 1011 an internal error. Every send has a deadline
(`--send-timeout`): a client that stops reading is aborted (no close frame can reach it) and its stream released,
as is one with more than `--max-unsent` results waiting for it. A stream that sends faster than the decoder
takes it is read no further until the decoder catches up, and the decoder serves streams in turn."""
