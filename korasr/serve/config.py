"""The service's settings as one typed schema: every size and wait a client can choose is bounded by a field here, and
`korasr serve`'s flags, its ``KORASR_*`` variables, docs/settings.md and the validation errors all come from it."""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BeforeValidator, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, model_validator
from pydantic import dataclasses as pydantic_dataclasses
from pydantic_core import PydanticUndefined

from korasr.runtime import CHUNK_SECONDS, DECODERS, GRAPHS, MIN_CHUNK_SECONDS

ENV = "KORASR_SERVE_CONFIG"  # the whole config as JSON, for `uvicorn --factory` worker processes
SECRETS = ("api_key", "callback_secret", "admin_key")  # these travel in their own environment variables
ENV_PREFIX = "KORASR_"  # --drain-timeout 20 is KORASR_DRAIN_TIMEOUT=20 (a container's settings, docs/deploy.md)
MiB, DAY = 2**20, 86400.0
# The schema refuses infinities and NaN everywhere; a str for a number is converted as a flag's text is.
SCHEMA = ConfigDict(allow_inf_nan=False)
Precision = Literal[tuple(GRAPHS)]  # type: ignore[valid-type]
Decoder = Literal[DECODERS]  # type: ignore[valid-type]


def setting(default: Any = PydanticUndefined, help: str = "", *, flag: str | None = None, scale: int = 1,
            metavar: str | None = None, env: str | None = None, secret: bool = False, **bounds: float) -> Any:  # fmt: skip
    """A field of the schema: what it does (``help``) and its bounds (``ge``, ``gt``, ``le``, ``lt``, in the field's
    unit). ``flag``: its option of `korasr serve` (default ``--`` and the name with dashes; ``""``: none), given in
    units of ``scale`` (``--max-upload-mb``: MiB); its variable is ``KORASR_<FLAG>``, or ``env`` for a setting without
    a flag. A ``secret`` is read from its variable alone (a command line is visible to every user of the host)."""
    extra = {"flag": flag, "scale": scale, "metavar": metavar, "env": env}
    if secret:
        return Field(default_factory=lambda: SecretStr(v) if (v := os.environ.get(env or "")) else None, repr=False,
                     description=help,
                     json_schema_extra=extra | {"flag": ""})  # fmt: skip
    return Field(default, description=help, json_schema_extra=extra, **bounds)  # type: ignore[arg-type]


@pydantic_dataclasses.dataclass(config=SCHEMA)
class ServeConfig:
    model: Path = setting(help="an export folder (make export), or models:/NAME@ALIAS (or /VERSION) from the "
                          "registry; when the registry does not answer at start, the version the alias last named "
                          "here, from the local cache", metavar="MODEL")  # fmt: skip
    max_upload_bytes: int = setting(25 * MiB, "an upload's size, at most (413 beyond, while it streams)",
                                    flag="--max-upload-mb", scale=MiB, ge=1024, le=2**31)  # fmt: skip
    max_audio_seconds: float = setting(300.0, "longer audio gets 413, known from its header before it is decoded",
                                       gt=0, le=4 * 3600)  # fmt: skip
    max_batch: int = setting(8, "requests decoded together (1: no batching)", ge=1, le=256)
    max_wait_ms: float = setting(10.0, "how long a batch waits to fill", ge=0, le=10_000)
    queue_size: int = setting(16, "transcription requests admitted at once (uploading, decoding from their format, "
                              "waiting or being decoded); one more gets 503 with Retry-After before its body is read",
                              ge=1, le=4096)  # fmt: skip
    max_waiting: int = setting(64, "requests waiting for admission in arrival order (no body read yet); more get 503",
                               ge=0, le=65536)  # fmt: skip
    # Long audio is decoded in chunks of at most chunk_seconds; a model batch holds at most batch_seconds of
    # padded audio. Together they bound the model's memory, whatever the requests' lengths.
    chunk_seconds: float = setting(CHUNK_SECONDS, "longer audio is decoded in chunks of at most this many seconds",
                                   ge=MIN_CHUNK_SECONDS, le=3600)  # fmt: skip
    batch_seconds: float = setting(30.0, "padded audio in one model batch, at most (from chunk_seconds; bounds the "
                                   "model memory; raise on a GPU)", ge=MIN_CHUNK_SECONDS, le=3600)  # fmt: skip
    upload_timeout_s: float = setting(60.0, "a request not admitted with its body complete within this many seconds "
                                      "gets 503/408 (slow clients hold no slot)", flag="--upload-timeout", metavar="S",
                                      gt=0, le=3600)  # fmt: skip
    decode_threads: int = setting(2, "threads decoding uploads from their container format", ge=1, le=64)
    threads: int | None = setting(
        None, "onnxruntime intra-op threads (default: OMP_NUM_THREADS when set, else onnxruntime's)", ge=1, le=256
    )
    precision: Precision = setting("fp32", "which graph of the export runs: model.onnx, model.fp16.onnx, "
                                   "model.int8.onnx (static Q/DQ, TensorRT's) or model.int8-dynamic.onnx (the fast "
                                   "one on CPUs)")  # fmt: skip
    decoder: Decoder | None = setting(None, "greedy, greedy-hangul (greedy's path restricted to whole Hangul "
                                      "syllables) or beam (default: beam when the export bundles an LM, korasr "
                                      "export --lm, else greedy-hangul for a jamo model, else greedy); live "
                                      "streams' finals: greedy when greedy, else greedy-hangul")  # fmt: skip
    max_hotwords: int = setting(100, "hotword phrases per request (each at most 100 characters)", ge=0, le=10_000)
    # live streams (GET /v1/stream, a WebSocket; the export needs streaming/ graphs)
    max_streams: int = setting(32, "WebSocket streams open at once (/v1/stream); one more is closed with 1013",
                               ge=0, le=4096)  # fmt: skip
    stream_idle_s: float = setting(10.0, "a stream that sent no frame for this many seconds is closed (1008)",
                                   flag="--stream-idle", metavar="S", gt=0, le=3600)  # fmt: skip
    # Time the server itself holds the client back (its stream has undecoded audio) does not count.
    min_stream_rate: float = setting(0.5, "a stream must send at least this × real time of audio over every window "
                                     "(1008 below; 0: off)", metavar="X", ge=0, le=10)  # fmt: skip
    stream_rate_window_s: float = setting(15.0, "the window of --min-stream-rate, and its grace period after the "
                                          "stream opens", flag="--stream-rate-window", metavar="S", ge=1, le=3600)  # fmt: skip
    # A client that reads nothing makes the server buffer at most send_buffer_bytes (the transport's high-water mark).
    send_timeout_s: float = setting(10.0, "every send to a client (response, result, close) completes within this "
                                    "many seconds or the connection is aborted and released", flag="--send-timeout",
                                    metavar="S", gt=0, le=600)  # fmt: skip
    send_buffer_bytes: int = setting(64 * 1024, "what the server buffers for a client that does not read, per "
                                     "connection, in the transport and the kernel each; a quarter of it unread for "
                                     "--send-timeout aborts a stream", flag="--send-buffer-kb", scale=1024,
                                     ge=1024, le=64 * MiB)  # fmt: skip
    max_unsent_results: int = setting(256, "results waiting for a stream's client; beyond, it is taken to read "
                                      "nothing and aborted", flag="--max-unsent", metavar="N", ge=1, le=65536)  # fmt: skip
    max_stream_seconds: float = setting(4 * 3600.0, "audio seconds per stream; then its finals and a close with 1008",
                                        gt=0, le=7 * DAY)  # fmt: skip
    max_frame_bytes: int = setting(64 * 1024, "largest WebSocket frame (1009 beyond)", flag="--max-frame-kb",
                                   scale=1024, ge=1024, le=16 * MiB)  # fmt: skip
    stream_batch: int = setting(32, "streams per streaming encoder call", ge=1, le=256)
    endpoint_silence_s: float = setting(0.8, "trailing silence after speech that ends an utterance (streams and HTTP "
                                        "segments)", flag="--endpoint-silence", metavar="S", gt=0, le=60)  # fmt: skip
    max_utterance_s: float = setting(20.0, "longest utterance before a cut (streams and HTTP segments)",
                                     flag="--max-utterance", metavar="S", ge=1, le=600)  # fmt: skip
    triton: str | None = setting(None, "HOST:GRPC_PORT of a Triton server running the export's korasr_ctc (gateway "
                                 "mode: the graph runs there, decoding, limits and everything else here)",
                                 metavar="HOST:PORT")  # fmt: skip
    triton_model: str = setting("korasr_ctc", "with --triton: the model that maps audio to log-probs")
    triton_stream_model: str = setting("korasr_stream", "with --triton and a streaming export: the model that decodes "
                                       "the WebSocket streams (Triton's sequence batcher; its endpointing)")  # fmt: skip
    triton_timeout_s: float = setting(30.0, "with --triton: one batch's deadline, retries of a restarting server "
                                      "included (then 504)", flag="--triton-timeout", metavar="S", gt=0, le=600)  # fmt: skip
    triton_max_in_flight: int = setting(8, "with --triton: batches in flight to Triton at once (each awaited, not a thread)",
                                        ge=1, le=1024)  # fmt: skip
    public_docs: bool = setting(False, "/docs, /redoc and /openapi.json without the API key")
    # korasr/serve/drain.py
    drain_timeout_s: float = setting(30.0, "on SIGTERM/SIGINT: /health 503, new requests 503, admitted ones, open "
                                     "streams (their finals, then 1001) and running jobs finished (released to the "
                                     "queue a margin before) within this many seconds, then exit 0; a second signal or "
                                     "the timeout ends it at once", flag="--drain-timeout", metavar="SECONDS",
                                     ge=1, le=3600)  # fmt: skip
    log_format: Literal["text", "json"] = setting("text", "json: one JSON object per line on stdout, one per request "
                                                  "(request id, route, status, latency, audio seconds, model version) "
                                                  "and per other record; text: uvicorn's lines")  # fmt: skip
    # the models:/NAME@ALIAS reference --model named (model is its local copy; korasr/serve/follow.py)
    model_ref: str | None = setting(None, "the models:/ reference the model came from (set from --model)", flag="")
    follow_s: float | None = setting(None, "with --model models:/NAME@ALIAS: check the alias this often; when it "
                                     "moves, load and warm the new version beside the old and swap it in "
                                     "(POST /admin/reload: now)", flag="--follow", metavar="SECONDS", ge=1, le=DAY)  # fmt: skip
    # The model's accuracy while it serves (korasr/serve/canary.py): a labelled manifest transcribed after every
    # model swap and every canary_every_s, at low priority and within canary_timeout_s; korasr_canary_cer{split,version}
    canary: Path | None = setting(None, "a labelled manifest (NeMo JSONL: audio_filepath, text; a split per row's "
                                  "optional 'split', else the file's name) transcribed after each model swap: its CER "
                                  "is korasr_canary_cer{split,version}", metavar="MANIFEST")  # fmt: skip
    canary_every_s: float | None = setting(None, "with --canary: also run it this often (default: only after a "
                                           "swap)", flag="--canary-every", metavar="S", ge=10, le=7 * DAY)  # fmt: skip
    canary_timeout_s: float = setting(300.0, "a canary run stops after this many seconds (its CER is then not "
                                      "reported)", flag="--canary-timeout", metavar="S", ge=1, le=DAY)  # fmt: skip
    canary_max_rows: int = setting(500, "rows of the canary manifest, at most (more: refused at start)", ge=1,
                                   le=100_000)  # fmt: skip
    # Opt-in collection for review (korasr/serve/collect.py): low-confidence requests kept, audio + hypothesis
    collect: Path | None = setting(None, "keep requests whose confidence is below --collect-below in this folder "
                                   "(audio, hypothesis, confidence) as a NeMo manifest, DIR/manifest.jsonl, that make "
                                   "retrain NEW_DATA=DIR/manifest.jsonl takes once people wrote the corrected text; "
                                   "off by default", metavar="DIR")  # fmt: skip
    collect_below: float = setting(0.5, "with --collect: the utterance confidence under which a request is kept",
                                   ge=0, le=1)  # fmt: skip
    collect_max_bytes: int = setting(1024 * MiB, "with --collect: the folder's audio, at most (then nothing more is "
                                     "kept until retention frees room)", flag="--collect-max-mb", scale=MiB, ge=MiB,
                                     le=2**40)  # fmt: skip
    collect_max_files: int = setting(10_000, "with --collect: requests kept, at most", ge=1, le=1_000_000)
    collect_retention_s: float = setting(7 * DAY, "with --collect: kept requests older than this are deleted",
                                         flag="--collect-retention", metavar="S", ge=60, le=365 * DAY)  # fmt: skip
    # Asynchronous jobs (POST /v1/jobs; korasr/serve/jobs/)
    jobs_dir: Path | None = setting(None, "the jobs' database and spooled audio (default: exp/jobs under the "
                                    "working directory; never named after the model, so jobs survive a promotion)",
                                    metavar="DIR")  # fmt: skip
    job_db: str | None = setting(None, "the jobs' database as a SQLAlchemy URL (default: sqlite:///DIR/jobs.db)",
                                 metavar="URL")  # fmt: skip
    job_workers: int = setting(1, "jobs decoded at once per process (0: accept jobs, decode none; another process "
                               "decodes them)", ge=0, le=16)  # fmt: skip
    job_sources: tuple[str, ...] = setting((), "a folder (resolved, so neither .. nor a symlink leaves it) or URL "
                                           "prefix a job's url may name (repeatable; the variable: comma-separated; "
                                           "default: none, uploads only)", flag="--job-source",
                                           metavar="DIR_OR_URL_PREFIX")  # fmt: skip
    job_queue_max: int = setting(1000, "queued jobs, all keys together; more get 429", ge=1, le=1_000_000)
    job_quota_per_key: int = setting(100, "queued and running jobs per API key; more get 429", flag="--job-quota",
                                     ge=1, le=1_000_000)  # fmt: skip
    job_spool_max_bytes: int = setting(10 * 1024 * MiB, "audio waiting in the spool, at most; an upload that would "
                                       "pass it gets 413", flag="--job-spool-max-mb", scale=MiB, ge=1024, le=2**50)  # fmt: skip
    job_max_audio_seconds: float = setting(4 * 3600.0, "a job's audio, at most (413 beyond, from its header, at "
                                           "submission)", gt=0, le=DAY)  # fmt: skip
    job_fetch_max_bytes: int = setting(2 * 1024 * MiB, "a job's url source fetched over HTTP, at most",
                                       flag="--job-fetch-max-mb", scale=MiB, ge=1024, le=2**40)  # fmt: skip
    job_fetch_timeout_s: float = setting(600.0, "a job's url source fetched over HTTP within this many seconds",
                                         flag="--job-fetch-timeout", metavar="S", gt=0, le=3600)  # fmt: skip
    job_fetches: int = setting(4, "jobs' URL sources fetched at once per process (they hold no admission slot); more "
                               "get 503", ge=1, le=256)  # fmt: skip
    job_retention_s: float = setting(DAY, "finished jobs and their results are kept this many seconds",
                                     flag="--job-retention", metavar="S", ge=1, le=30 * DAY)  # fmt: skip
    job_max_attempts: int = setting(3, "a job whose decoding the server died in this many times fails", ge=1, le=100)
    job_lease_s: float = setting(60.0, "a running job's lease, renewed every third of it; a replica that dies (kill "
                                 "-9, a lost node) holds its jobs this long before another takes them back",
                                 flag="--job-lease", metavar="SECONDS", ge=2, le=3600)  # fmt: skip
    callback_allow: tuple[str, ...] = setting((), "a URL prefix job callbacks may go to (repeatable; the variable: "
                                              "comma-separated; default: none; signed with KORASR_CALLBACK_SECRET)",
                                              metavar="URL_PREFIX")  # fmt: skip
    callback_max_attempts: int = setting(5, "tries of one callback, retry n after a random wait up to 2^(n-1) s (and "
                                         "a 429's or 503's Retry-After); a callback a replica was sending when it died "
                                         "is sent by another once these could have ended",
                                         flag="--callback-attempts", ge=1, le=20)  # fmt: skip
    callback_timeout_s: float = setting(10.0, "one callback attempt (connect, send, the answer's headers) within this "
                                        "many seconds", flag="--callback-timeout", metavar="S", gt=0, le=120)  # fmt: skip
    api_key: SecretStr | None = setting(help="the clients' key, or several separated by commas (none: the service is "
                                        "open)", env="KORASR_API_KEY", secret=True)  # fmt: skip
    callback_secret: SecretStr | None = setting(help="the secret job callbacks are signed with (several separated by "
                                                "spaces while one is rotated; none: jobs take no callback_url)",
                                                env="KORASR_CALLBACK_SECRET", secret=True)  # fmt: skip
    admin_key: SecretStr | None = setting(help="the operators' key: /admin/* takes it and no other (none: those "
                                          "routes are off); never a client key", env="KORASR_ADMIN_KEY", secret=True)  # fmt: skip

    @model_validator(mode="after")
    def _together(self) -> ServeConfig:
        """What one field's bounds cannot say: settings that depend on each other, keys, URLs."""
        from korasr.serve.jobs.net import check_prefix

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)

        need(self.follow_s is None or bool(self.model_ref), "follow needs the model as models:/NAME@ALIAS")
        need(self.batch_seconds >= self.chunk_seconds,
             f"batch_seconds {self.batch_seconds:g}: from chunk_seconds ({self.chunk_seconds:g}) to 3600")  # fmt: skip
        api_key, admin_key = (None if k is None else k.get_secret_value() for k in (self.api_key, self.admin_key))
        need(api_key is None or all(k.strip() for k in api_key.split(",")),
             "KORASR_API_KEY: one key, or several separated by commas, none empty")  # fmt: skip
        need(admin_key is None or 16 <= len(admin_key.strip()) <= 4096,
             "operator key (KORASR_ADMIN_KEY): 16 to 4096 characters")  # fmt: skip
        clients = [key.strip() for key in (api_key or "").split(",")]
        need(admin_key is None or (admin_key.strip() not in clients and "," not in admin_key),
             "KORASR_ADMIN_KEY: one key, none of the client keys (KORASR_API_KEY)")  # fmt: skip
        if self.callback_secret is not None:
            need(not (reason := _callback_secret_problem(self.callback_secret.get_secret_value())),
                 f"callback secret (KORASR_CALLBACK_SECRET): {reason}")  # fmt: skip
        need(self.job_db is None or (0 < len(self.job_db) <= 2000 and "://" in self.job_db),
             "job_db: a SQLAlchemy URL (sqlite:///PATH, postgresql://…)")  # fmt: skip
        need(len(self.job_sources) <= 100 and len(self.callback_allow) <= 100,
             "at most 100 job sources and callback prefixes")  # fmt: skip
        for source in self.job_sources:
            url = source.startswith(("http://", "https://"))
            need(url or (Path(source).is_absolute() and len(source) <= 1000),
                 f"job source {source[:100]!r}: an absolute folder or an http(s):// URL prefix")  # fmt: skip
            if url:
                need(not (reason := check_prefix(source)), f"job source {source[:100]!r}: {reason}")
        for prefix in self.callback_allow:
            need(not (reason := check_prefix(prefix)), f"callback prefix {prefix[:100]!r}: {reason}")
        return self

    def validate(self) -> None:
        """Checks the fields again (after one was assigned): ValueError naming the field and its bounds."""
        type(self)(**{f.name: getattr(self, f.name) for f in fields(self)})

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


def _callback_secret_problem(value: str) -> str | None:
    """Why the callback secret is refused, or None: korasr.serve.jobs.callbacks.parse_secrets decides (several
    secrets while one is rotated); without it, one secret of 16 to 4096 characters."""
    from korasr.serve.jobs import callbacks

    if hasattr(callbacks, "parse_secrets"):
        try:
            callbacks.parse_secrets(value)
        except ValueError as e:
            return str(e)
        return None
    return None if 16 <= len(value) <= 4096 else "16 to 4096 characters"


@pydantic_dataclasses.dataclass(config=SCHEMA, frozen=True)
class Listen:
    """Where `korasr serve` listens: the server's own settings, beside the app's (ServeConfig)."""

    host: str = setting("127.0.0.1", "bind address (127.0.0.1: loopback only)", metavar="HOST")
    port: int = setting(8000, "the port to listen on", ge=0, le=65535)
    workers: int = setting(1, "server processes, each with its own model", ge=1, le=64)


# --- the schema read back: one Setting per field, for the flags, the variables and the docs table -----------------


@dataclass(frozen=True)
class Setting:
    name: str  # the field's
    owner: type  # ServeConfig or Listen
    flag: str  # "" when it has none (a secret; model_ref)
    env: str  # "" when it has none (model_ref: set from --model)
    scale: int  # the flag's unit in the field's (1024: KiB)
    metavar: str | None
    kind: type  # int, float, str, bool (of one value; repeatable: str)
    choices: tuple[str, ...] | None
    optional: bool  # None is a value: unset
    repeatable: bool  # a tuple: the flag repeated, the variable comma-separated
    secret: bool
    required: bool
    default: Any  # the field's
    bounds: dict[str, float]  # ge / gt / le / lt, in the field's unit
    help: str

    @property
    def flag_default(self) -> Any:
        """The default in the flag's unit."""
        if self.required or self.default is None or self.scale == 1:
            return None if self.required else self.default
        return self.default / self.scale

    def flag_bounds(self) -> dict[str, float]:
        return {k: v / self.scale for k, v in self.bounds.items()}

    def span(self) -> str:
        """The bounds as words: "1 to 256", "(0, 3600]"; a size given in KiB or MiB as bytes ("1 KiB to 2 GiB")."""
        return span(self.bounds, size) if self.scale != 1 else span(self.bounds)

    def flag_type(self) -> Any:
        """The annotated type of one flag value: its kind, choices and bounds in the flag's unit."""
        if self.choices:
            return Literal[self.choices]  # type: ignore[valid-type]
        kind = float if self.scale != 1 else self.kind
        return Annotated[kind, Field(**self.flag_bounds())] if self.bounds else kind  # type: ignore[call-overload]

    def to_field(self, value: Any) -> Any:
        """A flag's value in the field's unit."""
        if value is None or self.scale == 1:
            return tuple(value) if self.repeatable else value
        return int(value * self.scale) if self.kind is int else value * self.scale


def number(value: float) -> str:
    """A bound or a value as a person writes it: 1000000, 0.5, 0.000976562."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**63 else f"{value:.6g}"


def span(bounds: Mapping[str, float], write: Callable[[float], str] = number) -> str:
    """Bounds as words: "1 to 256", "(0, 3600]", "at least 1"."""
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if low is None and high is None:
        return ""
    if low is not None and high is not None and "gt" not in bounds and "lt" not in bounds:
        return f"{write(low)} to {write(high)}"
    if high is None:
        return f"at least {write(low)}" if "ge" in bounds else f"above {write(low)}"
    if low is None:
        return f"at most {write(high)}" if "le" in bounds else f"below {write(high)}"
    return f"{'[('['gt' in bounds]}{write(low)}, {write(high)}{'])'['lt' in bounds]}"


def size(count: float) -> str:
    """A byte count in the largest binary unit that writes it whole: 1 KiB, 2 GiB, 1000 B."""
    for exponent, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if count >= 2**exponent and count % 2**exponent == 0:
            return f"{int(count) >> exponent} {unit}"
    return f"{number(count)} B"


def _setting(owner: type, name: str, info: Any) -> Setting:
    extra = info.json_schema_extra or {}
    annotation, optional = info.annotation, False
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation, optional = args[0], True
    choices = tuple(typing.get_args(annotation)) if typing.get_origin(annotation) is Literal else None
    repeatable = typing.get_origin(annotation) is tuple
    secret = annotation is SecretStr
    kind = str if choices or repeatable or secret or annotation is Path else annotation
    flag = extra.get("flag")
    flag = "--" + name.replace("_", "-") if flag is None else flag
    bounds = {key: getattr(m, key) for m in info.metadata for key in ("ge", "gt", "le", "lt")
              if isinstance(m, annotated_types.BaseMetadata) and hasattr(m, key)}  # fmt: skip
    default = None if info.default_factory is not None else info.default
    return Setting(
        name=name, owner=owner, flag=flag, env=extra.get("env") or (flag and ENV_PREFIX + flag[2:].upper().replace("-", "_")),
        scale=extra.get("scale", 1), metavar=extra.get("metavar"), kind=kind, choices=choices, optional=optional,
        repeatable=repeatable, secret=secret, required=info.default is PydanticUndefined and info.default_factory is None,
        default=default, bounds=bounds, help=info.description or "",
    )  # fmt: skip


def settings() -> list[Setting]:
    """Every setting of `korasr serve`, in the schema's order: where it listens (Listen), then the app (ServeConfig)."""
    return [_setting(owner, name, info) for owner in (Listen, ServeConfig)
            for name, info in owner.__pydantic_fields__.items()]  # fmt: skip


# --- one wording for every refusal: a field's, a flag's, a variable's ---------------------------------------------

RANGE_ERRORS = {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}


def reason(error: Mapping[str, Any], setting: Setting | None, *, field_unit: bool = False) -> str:
    """Why a value was refused, from pydantic's error: "0 is out of range (1 to 4096)", "'x' is not a number" (the
    value in the flag's unit, or with ``field_unit`` in the field's)."""
    value, kind = error.get("input"), error["type"]
    if kind in RANGE_ERRORS:
        shown = number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if setting and setting.scale != 1:  # a size: the value's unit beside the bounds' ("0 MiB … (1 KiB to 2 GiB)")
            shown = f"{shown} {'B' if field_unit else size(setting.scale).removeprefix('1 ')}"
        bounds = setting.span() if setting else error["msg"]
        return f"{shown} is out of range ({bounds})"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    choices = "one of " + ", ".join(setting.choices or ()) if setting else "one of the choices"
    what = {"int_parsing": "an integer", "int_from_float": "an integer", "int_type": "an integer",
            "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
            "bool_parsing": "one of 1/0, true/false, yes/no, on/off", "bool_type": "one of 1/0, true/false, yes/no, on/off",
            "literal_error": choices}.get(kind)  # fmt: skip
    return f"{value!r} is not {what}" if what else f"{value!r}: {error['msg']}"


class SettingError(ValueError):
    """A setting refused: the message names the field (or the flag, or the variable) and why."""


def refusal(e: ValidationError, name_of: Mapping[str, Setting]) -> str:
    """One line per refused field, its name first ("job_queue_max 0 is out of range (1 to 1000000)"); the schema's
    own checks of several fields word their messages whole."""
    lines = []
    for error in e.errors():
        loc = ".".join(map(str, error["loc"]))
        why = reason(error, name_of.get(str(error["loc"][0])) if loc else None, field_unit=True)
        lines.append(why if not loc else f"{loc}: {why}" if error["type"] == "value_error" else f"{loc} {why}")
    return "; ".join(lines)


def _refusing(cls: type) -> None:
    """``cls(...)`` and ``dataclasses.replace`` raise SettingError ("serve: job_queue_max 0: out of range (1 to
    1000000)") instead of pydantic's report: one line per refused field, its name first."""
    init, by_name = cls.__init__, {s.name: s for s in settings() if s.owner is cls}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as e:
            raise SettingError(f"serve: {refusal(e, by_name)}") from None

    cls.__init__ = __init__  # type: ignore[method-assign]


_refusing(ServeConfig)
_refusing(Listen)


# --- the variables: pydantic-settings reads KORASR_<FLAG>, each value typed and bounded as its flag's -----------


def _comma_list(value: Any) -> Any:
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


def flag_settings() -> list[Setting]:
    return [s for s in settings() if s.flag]


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The flags' values ``environ`` sets (by name; in the flags' units), each checked as its flag is; an empty
    variable counts as unset. SettingError names the variable, its flag and the reason."""
    from pydantic import create_model
    from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
    from pydantic_settings.sources import EnvSettingsSource
    from pydantic_settings.sources.utils import parse_env_vars

    known = flag_settings()
    columns: dict[str, Any] = {}
    for s in known:
        kind = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] if s.repeatable else s.flag_type()
        columns[s.name] = (kind | None, Field(None, validation_alias=s.env))

    class Environment(EnvSettingsSource):
        def _load_env_vars(self) -> Mapping[str, str | None]:
            return parse_env_vars(environ, case_sensitive=True, ignore_empty=True)

    class Base(BaseSettings):
        model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore",
                                          allow_inf_nan=False)  # fmt: skip

        @classmethod
        def settings_customise_sources(cls, settings_cls, **sources):  # type: ignore[no-untyped-def,override]
            return (Environment(settings_cls),)

    model = create_model("ServeSettings", __base__=Base, **columns)
    try:
        values = model()
    except ValidationError as e:
        by_env = {s.env: s for s in known}
        problems = []
        for error in e.errors():
            s = by_env.get(str(error["loc"][0])) or next(x for x in known if x.name == error["loc"][0])
            text = environ.get(s.env, "").strip()
            problems.append(f"{s.env}={text!r} (the variable of {s.flag}): {reason(error, s)}")
        raise SettingError("; ".join(problems)) from None
    return {s.name: getattr(values, s.name) for s in known if getattr(values, s.name) is not None}


def check_flag(s: Setting, text: str) -> Any:
    """One flag value from its text, typed and bounded by the schema (in the flag's unit); ValueError with the reason."""
    try:
        return TypeAdapter(s.flag_type(), config=SCHEMA).validate_python(text)
    except ValidationError as e:
        raise ValueError(reason(e.errors()[0], s)) from None
