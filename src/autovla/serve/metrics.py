"""Prometheus metrics of one service (its own registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-export)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "autovla_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "autovla_errors", "Rejected or failed requests", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "autovla_request_seconds", "Request latency (server side)", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "autovla_queue_seconds", "Wait from admission to the start of the batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "autovla_batch_seconds", "Wall time of one planner batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "autovla_batch_size", "Requests per planner batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "autovla_queue_depth", "Admitted planning requests (decoding, queued, planning)",
            registry=r,
        )  # fmt: skip
        self.waiting = Gauge(
            "autovla_batch_waiting", "Requests waiting for their batch to start", registry=r
        )

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
