"""The service's Prometheus metrics, one registry per app (so tests and workers never share one)."""

from __future__ import annotations


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = r = CollectorRegistry()
        self.requests = Counter("korasr_requests", "HTTP requests by route template and status", ["route", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("korasr_request_seconds", "request latency", ["route"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        self.audio_seconds = Counter("korasr_audio_seconds", "seconds of audio transcribed", registry=r)
        self.rtf = Histogram("korasr_real_time_factor", "processing time / audio duration", registry=r,
                             buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))  # fmt: skip
        self.in_flight = Gauge("korasr_in_flight_requests", "requests being processed", registry=r)
        self.draining = Gauge("korasr_draining", "1 while the server drains after SIGTERM (new work refused, what it "
                              "holds finished or released), else 0", registry=r)  # fmt: skip
        self.batch_size = Histogram("korasr_batch_size", "requests per decoding batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32))  # fmt: skip
        self.model = Info("korasr_model", "the served export (name and version: the registry's, when followed)",
                          registry=r)  # fmt: skip
        self.model_cer = Gauge("stt_model_cer", "the served version's registered CER per split (percent)", ["split"],
                               registry=r)  # fmt: skip
        self.reloads = Counter("korasr_model_reloads", "model reloads by outcome (swapped, failed)", ["outcome"],
                               registry=r)  # fmt: skip
        self.follow_errors = Counter("korasr_registry_follow_errors", "reads of the followed alias that failed (the "
                                     "registry unreachable, or the alias names nothing)", registry=r)  # fmt: skip
        self.registry_reachable = Gauge("korasr_registry_reachable", "1 while the followed registry answers, 0 while "
                                        "it does not (the serving model keeps serving)", registry=r)  # fmt: skip
        self.streams = Gauge("korasr_streams_active", "open WebSocket streams", registry=r)
        self.chunk_seconds = Histogram("korasr_stream_chunk_seconds", "compute per streaming encoder call (one "
                                       "batch of streams)", registry=r,
                                       buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))  # fmt: skip
        self.stream_batch = Histogram("korasr_stream_batch_size", "streams per streaming encoder call", registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip
        self.partial_latency = Histogram("korasr_stream_partial_seconds", "from audio arriving to the partial it "
                                         "produced", registry=r,
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))  # fmt: skip
        self.finals = Counter("korasr_stream_finals", "final results sent on streams", registry=r)
        self.stream_closes = Counter("korasr_stream_closes", "streams ended, by the server's close code (403: "
                                     "upgrade refused; client: the client closed; aborted: it read nothing; "
                                     "cancelled: the server stopped first)",
                                     ["code"], registry=r)  # fmt: skip
        self.send_timeouts = Counter("korasr_send_timeouts", "connections aborted at the send deadline", ["kind"],
                                     registry=r)  # fmt: skip
        self.prompt_dropped = Counter("korasr_prompt_words_dropped", "words of OpenAI prompts left out of the "
                                      "hotwords, by reason", ["reason"], registry=r)  # fmt: skip
        self.jobs_finished = Counter("korasr_jobs_finished", "asynchronous jobs by final status (succeeded, failed, "
                                     "cancelled)", ["status"], registry=r)  # fmt: skip
        self.jobs_queued = Gauge("korasr_jobs_queued", "jobs waiting in the queue (every process sharing its database)",
                                 registry=r)  # fmt: skip
        self.job_callbacks = Counter("korasr_job_callbacks", "job callbacks by outcome (delivered, failed)", ["outcome"],
                                     registry=r)  # fmt: skip
