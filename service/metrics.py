"""Prometheus metrics, aggregated over all gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("app_requests_total", "HTTP requests served", ["method", "route", "status"])
LATENCY = Histogram(
    "app_request_duration_seconds",
    "Time from request to end of response",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60),
)
IN_FLIGHT = Gauge("app_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum")
WEBSOCKETS = Gauge("app_websockets_open", "WebSocket connections open", multiprocess_mode="livesum")
WORKERS = Gauge("app_worker_up", "One per live worker process", multiprocess_mode="livesum")


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
