"""The service's limits, in one place: every size a client can choose is bounded by a field here."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from korasr.runtime import CHUNK_SECONDS, GRAPHS, check_chunk_seconds

ENV = "KORASR_SERVE_CONFIG"  # the whole config as JSON, for `uvicorn --factory` worker processes
SECRETS = ("api_key", "callback_secret", "admin_key")  # these travel in their own environment variables


@dataclass
class ServeConfig:
    model: Path
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 300.0
    max_batch: int = 8
    max_wait_ms: float = 10.0
    # Transcription requests admitted at once (uploading, decoding from their format, waiting or being decoded
    # by the model); one more gets 503 with Retry-After before its body is read.
    queue_size: int = 16
    max_waiting: int = 64  # requests waiting for a slot in arrival order (no body read yet); more get 503
    # Long audio is decoded in chunks of at most chunk_seconds; a model batch holds at most batch_seconds of
    # padded audio. Together they bound the model's memory, whatever the requests' lengths.
    chunk_seconds: float = CHUNK_SECONDS
    batch_seconds: float = 30.0
    upload_timeout_s: float = 60.0  # admitted with the body complete by then, or 503/408 (slow clients hold no slot)
    decode_threads: int = 2  # threads decoding uploads from their container format
    threads: int | None = None  # onnxruntime intra-op threads
    precision: str = "fp32"
    # greedy or beam; None: beam when the export bundles an LM (korasr export --lm), else greedy
    decoder: str | None = None
    max_hotwords: int = 100  # phrases per request (each at most 100 characters)
    # live streams (GET /v1/stream, a WebSocket; the export needs streaming/ graphs)
    max_streams: int = 32  # open at once; one more is closed with 1013
    stream_idle_s: float = 10.0  # no frame for this long: closed with 1008
    # A stream must deliver audio at no less than min_stream_rate × real time over every window of
    # stream_rate_window_s seconds spent waiting for the client (the first window is the grace period); else 1008.
    # Time the server itself holds the client back (its stream has undecoded audio) does not count.
    min_stream_rate: float = 0.5
    stream_rate_window_s: float = 15.0
    # Every send to a client (a response, a result, a close) completes within send_timeout_s or the connection is
    # aborted and what it held is released; a client that reads nothing makes the server buffer at most
    # send_buffer_bytes for it (the transport's high-water mark).
    send_timeout_s: float = 10.0
    send_buffer_bytes: int = 64 * 1024
    max_unsent_results: int = 256  # results queued for a stream and not yet written; then it is aborted
    max_stream_seconds: float = 4 * 3600.0  # audio seconds per stream; then its finals and a close with 1008
    max_frame_bytes: int = 64 * 1024  # per binary frame (2 s of 16 kHz PCM); larger: 1009
    stream_batch: int = 32  # streams per encoder call
    endpoint_silence_s: float = 0.8  # trailing silence after speech that ends an utterance (a final)
    max_utterance_s: float = 20.0  # an utterance is cut (a final) at this length
    public_docs: bool = False  # /docs, /redoc and /openapi.json without the API key
    # SIGTERM/SIGINT drain the server (korasr/serve/drain.py): new work refused, admitted requests, open streams and
    # running jobs finished, all within drain_timeout_s (jobs released to the queue a margin before it), then exit 0
    drain_timeout_s: float = 30.0
    log_format: str = "text"  # text (uvicorn's lines), or json: one object per line on stdout, one per request
    # models:/NAME@ALIAS the service was started from (model is its local copy); with follow_s, the alias is checked
    # that often and a new version is loaded, warmed and swapped in (korasr/serve/follow.py)
    model_ref: str | None = None
    follow_s: float | None = None
    # Asynchronous jobs (POST /v1/jobs; korasr/serve/jobs/): the database and the spool of uploads live in jobs_dir
    # (None: a folder in the system's temporary directory named after the model, lost at a reboot: set it to keep
    # jobs); job_db is any SQLAlchemy URL (None: SQLite in jobs_dir). job_workers: decoding loops per process (0: this
    # process only accepts jobs; another decodes them).
    jobs_dir: Path | None = None
    job_db: str | None = None
    job_workers: int = 1
    # where `url` may point: folders (resolved, so neither `..` nor a symlink leaves them) and URL prefixes
    job_sources: tuple[str, ...] = ()
    job_queue_max: int = 1000  # queued jobs, all keys together; one more gets 429
    job_quota_per_key: int = 100  # queued and running jobs of one API key; one more gets 429
    job_spool_max_bytes: int = 10 * 2**30  # audio waiting in the spool; an upload that would pass it gets 413
    job_max_audio_seconds: float = 4 * 3600.0  # from the header, at submission; longer gets 413
    job_fetch_max_bytes: int = 2 * 2**30  # a `url` source fetched over HTTP, at most this many bytes
    job_fetch_timeout_s: float = 600.0  # and within this many seconds
    job_fetches: int = 4  # URL fetches at once per process (they hold no admission slot); one more gets 503
    job_retention_s: float = 24 * 3600.0  # finished jobs (their results) are kept this long after finishing
    job_max_attempts: int = 3  # a job whose decoding the server died in this many times fails
    # a running job's lease, renewed every third of it: a replica that dies (kill -9, a lost node) holds its jobs at
    # most this long before another takes them back
    job_lease_s: float = 60.0
    # callbacks: POSTed to URLs under these prefixes only, signed with the deployment's secret
    callback_allow: tuple[str, ...] = ()
    callback_max_attempts: int = 5
    callback_timeout_s: float = 10.0  # per request
    api_key: str | None = field(default_factory=lambda: os.environ.get("KORASR_API_KEY") or None, repr=False)
    callback_secret: str | None = field(
        default_factory=lambda: os.environ.get("KORASR_CALLBACK_SECRET") or None, repr=False
    )
    # the operators' key: /admin/* takes it and no other (None: those routes are off); never a client key
    admin_key: str | None = field(default_factory=lambda: os.environ.get("KORASR_ADMIN_KEY") or None, repr=False)

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        self.jobs_dir = None if self.jobs_dir is None else Path(self.jobs_dir)
        self.job_sources, self.callback_allow = tuple(self.job_sources), tuple(self.callback_allow)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"serve: {what}")

        need(1024 <= self.max_upload_bytes <= 2**31, f"max_upload_bytes {self.max_upload_bytes}: 1 KiB to 2 GiB")
        need(0 < self.max_audio_seconds <= 4 * 3600, f"max_audio_seconds {self.max_audio_seconds}: (0, 14400]")
        need(1 <= self.max_batch <= 256, f"max_batch {self.max_batch}: 1 to 256")
        need(self.follow_s is None or 1 <= self.follow_s <= 86400, f"follow {self.follow_s}: 1 to 86400 s")
        need(self.follow_s is None or bool(self.model_ref), "follow needs the model as models:/NAME@ALIAS")
        need(0 <= self.max_wait_ms <= 10_000, f"max_wait_ms {self.max_wait_ms}: 0 to 10000")
        need(1 <= self.queue_size <= 4096, f"queue_size {self.queue_size}: 1 to 4096")
        need(0 <= self.max_waiting <= 65536, f"max_waiting {self.max_waiting}: 0 to 65536")
        try:
            check_chunk_seconds(self.chunk_seconds)
        except ValueError as e:
            need(False, str(e))
        need(self.chunk_seconds <= self.batch_seconds <= 3600, f"batch_seconds {self.batch_seconds}: from "
             f"chunk_seconds ({self.chunk_seconds}) to 3600")  # fmt: skip
        need(0 < self.upload_timeout_s <= 3600, f"upload_timeout_s {self.upload_timeout_s}: (0, 3600]")
        need(1 <= self.decode_threads <= 64, f"decode_threads {self.decode_threads}: 1 to 64")
        need(self.threads is None or 1 <= self.threads <= 256, f"threads {self.threads}: 1 to 256")
        need(self.precision in GRAPHS, f"precision {self.precision!r}: one of {', '.join(GRAPHS)}")
        need(self.decoder in (None, "greedy", "beam"), f"decoder {self.decoder!r}: greedy or beam")
        need(0 <= self.max_hotwords <= 10_000, f"max_hotwords {self.max_hotwords}: 0 to 10000")
        need(0 <= self.max_streams <= 4096, f"max_streams {self.max_streams}: 0 to 4096")
        need(0 < self.stream_idle_s <= 3600, f"stream_idle_s {self.stream_idle_s}: (0, 3600]")
        need(0 <= self.min_stream_rate <= 10, f"min_stream_rate {self.min_stream_rate}: 0 to 10 (× real time)")
        need(1 <= self.stream_rate_window_s <= 3600, f"stream_rate_window_s {self.stream_rate_window_s}: 1 to 3600")
        need(0 < self.send_timeout_s <= 600, f"send_timeout_s {self.send_timeout_s}: (0, 600]")
        need(
            1024 <= self.send_buffer_bytes <= 64 * 2**20, f"send_buffer_bytes {self.send_buffer_bytes}: 1 KiB to 64 MiB"
        )
        need(1 <= self.max_unsent_results <= 65536, f"max_unsent_results {self.max_unsent_results}: 1 to 65536")
        need(0 < self.max_stream_seconds <= 7 * 24 * 3600, f"max_stream_seconds {self.max_stream_seconds}: (0, 1 week]")
        need(1024 <= self.max_frame_bytes <= 16 * 2**20, f"max_frame_bytes {self.max_frame_bytes}: 1 KiB to 16 MiB")
        need(1 <= self.stream_batch <= 256, f"stream_batch {self.stream_batch}: 1 to 256")
        need(0 < self.endpoint_silence_s <= 60, f"endpoint_silence_s {self.endpoint_silence_s}: (0, 60]")
        need(1 <= self.max_utterance_s <= 600, f"max_utterance_s {self.max_utterance_s}: 1 to 600")
        need(1 <= self.drain_timeout_s <= 3600, f"drain_timeout_s {self.drain_timeout_s}: 1 to 3600")
        need(self.log_format in ("text", "json"), f"log_format {self.log_format!r}: text or json")
        self.validate_jobs(need)

    def validate_jobs(self, need) -> None:  # type: ignore[no-untyped-def]
        from korasr.serve.jobs.net import check_prefix

        need(self.api_key is None or all(k.strip() for k in self.api_key.split(",")),
             "KORASR_API_KEY: one key, or several separated by commas, none empty")  # fmt: skip
        need(self.admin_key is None or 16 <= len(self.admin_key.strip()) <= 4096,
             "operator key (KORASR_ADMIN_KEY): 16 to 4096 characters")  # fmt: skip
        clients = [key.strip() for key in (self.api_key or "").split(",")]
        need(self.admin_key is None or (self.admin_key.strip() not in clients and "," not in self.admin_key), "KORASR_ADMIN_KEY: one key, none of the client keys (KORASR_API_KEY)")  # fmt: skip
        need(self.job_db is None or (0 < len(self.job_db) <= 2000 and "://" in self.job_db),
             "job_db: a SQLAlchemy URL (sqlite:///PATH, postgresql://…)")  # fmt: skip
        need(0 <= self.job_workers <= 16, f"job_workers {self.job_workers}: 0 to 16")
        need(1 <= self.job_queue_max <= 1_000_000, f"job_queue_max {self.job_queue_max}: 1 to 1000000")
        need(1 <= self.job_quota_per_key <= 1_000_000, f"job_quota_per_key {self.job_quota_per_key}: 1 to 1000000")
        need(
            1024 <= self.job_spool_max_bytes <= 2**50, f"job_spool_max_bytes {self.job_spool_max_bytes}: 1 KiB to 1 PiB"
        )
        need(0 < self.job_max_audio_seconds <= 24 * 3600,
             f"job_max_audio_seconds {self.job_max_audio_seconds}: (0, 86400]")  # fmt: skip
        need(
            1024 <= self.job_fetch_max_bytes <= 2**40, f"job_fetch_max_bytes {self.job_fetch_max_bytes}: 1 KiB to 1 TiB"
        )
        need(0 < self.job_fetch_timeout_s <= 3600, f"job_fetch_timeout_s {self.job_fetch_timeout_s}: (0, 3600]")
        need(1 <= self.job_fetches <= 256, f"job_fetches {self.job_fetches}: 1 to 256")
        need(1 <= self.job_retention_s <= 30 * 86400, f"job_retention_s {self.job_retention_s}: 1 s to 30 days")
        need(1 <= self.job_max_attempts <= 100, f"job_max_attempts {self.job_max_attempts}: 1 to 100")
        need(2 <= self.job_lease_s <= 3600, f"job_lease_s {self.job_lease_s}: 2 to 3600 s")
        need(1 <= self.callback_max_attempts <= 20, f"callback_max_attempts {self.callback_max_attempts}: 1 to 20")
        need(0 < self.callback_timeout_s <= 120, f"callback_timeout_s {self.callback_timeout_s}: (0, 120]")
        need(self.callback_secret is None or 16 <= len(self.callback_secret) <= 4096,
             "callback secret (KORASR_CALLBACK_SECRET): 16 to 4096 characters")  # fmt: skip
        need(
            len(self.job_sources) <= 100 and len(self.callback_allow) <= 100,
            "at most 100 job sources and callback prefixes",
        )
        for source in self.job_sources:
            url = source.startswith(("http://", "https://"))
            need(url or (Path(source).is_absolute() and len(source) <= 1000),
                 f"job source {source[:100]!r}: an absolute folder or an http(s):// URL prefix")  # fmt: skip
            if url:
                need(not (reason := check_prefix(source)), f"job source {source[:100]!r}: {reason}")
        for prefix in self.callback_allow:
            need(not (reason := check_prefix(prefix)), f"callback prefix {prefix[:100]!r}: {reason}")

    @property
    def callback_hold_s(self) -> float:
        """How long a callback being sent stays claimed (then another process may send it): its longest delivery under
        these attempts and timeouts, and 10 s for the database; never shorter, so no two processes send it at once."""
        from korasr.serve.jobs.callbacks import longest_delivery_s

        return longest_delivery_s(self.callback_max_attempts, self.callback_timeout_s) + 10.0

    def to_env(self) -> str:
        values = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in SECRETS}
        return json.dumps(values)

    @classmethod
    def from_env(cls) -> ServeConfig:
        """For `uvicorn --factory` workers: every field from KORASR_SERVE_CONFIG (the API key from KORASR_API_KEY, the
        callback secret from KORASR_CALLBACK_SECRET, the operator key from KORASR_ADMIN_KEY)."""
        if not os.environ.get(ENV):
            raise ValueError(f"{ENV} is not set (korasr serve --workers N sets it for its workers)")
        values = json.loads(os.environ[ENV])
        known = {f.name for f in fields(cls)} - set(SECRETS)
        return cls(**{k: v for k, v in values.items() if k in known})
