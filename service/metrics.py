"""Prometheus metrics, aggregated over all gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set.

In multiprocess mode every update is a write into this worker's mmap file; a request makes five (in flight
up and down, its count, the latency sum and bucket). `request_done` keeps the labelled children it has
made, so a request does not pay prometheus-client's `labels()` lookup twice.
"""

from __future__ import annotations

import os
from typing import Any

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

_counted: dict[tuple[str, str, int], Any] = {}
_timed: dict[str, Any] = {}


def request_done(method: str, route: str, status: int, seconds: float) -> None:
    """Count one finished HTTP request and observe its duration (children cached per label values)."""
    key = (method, route, status)
    counter = _counted.get(key)
    if counter is None:
        counter = _counted[key] = REQUESTS.labels(method, route, str(status))
    counter.inc()
    timer = _timed.get(route)
    if timer is None:
        timer = _timed[route] = LATENCY.labels(route)
    timer.observe(seconds)


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
