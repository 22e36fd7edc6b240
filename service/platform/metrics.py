"""Prometheus metrics, aggregated over all gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set.

Requests are counted through REQUEST_METRICS (see RequestMetrics for why).
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Iterable
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
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, float("inf"))
LATENCY = Histogram(
    "app_request_duration_seconds", "Time from request to end of response", ["route"], buckets=LATENCY_BUCKETS
)
IN_FLIGHT = Gauge("app_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum")
WEBSOCKETS = Gauge("app_websockets_open", "WebSocket connections open", multiprocess_mode="livesum")
WORKERS = Gauge("app_worker_up", "One per live worker process", multiprocess_mode="livesum")
WEBSOCKET_CLOSES = Counter(
    "app_websocket_closes",
    "WebSockets the app accepted and that ended, by close code: the app's own close, else the code of the "
    "disconnect it received (1006: the peer dropped the connection without a close frame), else none",
    ["code"],
)
CONNECTIONS_OPENED = Counter(
    "app_connections_opened",
    "TCP connections the app accepted (a WebSocket upgrade is not another one): per request served, how "
    "often nginx opens a new upstream connection instead of reusing a pooled one",
)
# Codes a peer may send are 1000-4999; past the registered ones they share a label, so a client cannot
# make series without bound.
WEBSOCKET_CODES = frozenset(range(1000, 1016))


def websocket_close_label(code: int | None) -> str:
    if code is None:
        return "none"
    return str(code) if code in WEBSOCKET_CODES else "other"


class RequestMetrics:
    """The request metrics of one worker, written to prometheus-client at most once per event-loop turn.

    In multiprocess mode every update is a write into this worker's mmap file, under a lock and after a
    getpid(); a loaded worker finishes many requests per turn of its loop. So requests in flight and the
    request counts are kept here and written by one callback per turn; a scrape (any worker reads every
    worker's file) sees them at most that turn late, and the worker that serves the scrape writes its own
    first. The latency histogram has no public batch update: its sum and bucket counts are added to the
    labelled child's own values (`_sum`, `_buckets`: what `Histogram.observe` writes, in the pinned
    prometheus-client), one write per route and bucket per turn instead of two per request.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduled = False
        self.in_flight = 0
        self.in_flight_written = 0
        self.counts: dict[tuple[str, str, int], int] = {}
        self.counters: dict[tuple[str, str, int], Any] = {}
        self.latencies: dict[str, list[float]] = {}  # route -> [sum of seconds, count per bucket...]
        self.timers: dict[str, Any] = {}

    def started(self) -> None:
        self.in_flight += 1
        self.schedule()

    def done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.in_flight -= 1
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        latency = self.latencies.get(route)
        if latency is None:
            latency = self.latencies[route] = [0.0] * (1 + len(LATENCY_BUCKETS))
        latency[0] += seconds
        latency[1 + bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bucket with seconds <= le
        self.schedule()

    def schedule(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new loop (tests): write what the old one may not have run
            self.write()
            self.loop = loop
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.write)

    def write(self) -> None:
        self.scheduled = False
        if self.in_flight != self.in_flight_written:
            IN_FLIGHT.set(self.in_flight)
            self.in_flight_written = self.in_flight
        if self.counts:
            counts, self.counts = self.counts, {}
            for key, n in counts.items():
                counter = self.counters.get(key)
                if counter is None:
                    method, route, status = key
                    counter = self.counters[key] = REQUESTS.labels(method, route, str(status))
                counter.inc(n)
        if self.latencies:
            latencies, self.latencies = self.latencies, {}
            for route, (seconds, *buckets) in latencies.items():
                timer = self.timers.get(route)
                if timer is None:
                    timer = self.timers[route] = LATENCY.labels(route)
                timer._sum.inc(seconds)
                for index, observed in enumerate(buckets):
                    if observed:
                        timer._buckets[index].inc(observed)


REQUEST_METRICS = RequestMetrics()

UNMATCHED = "unmatched"  # no route of the app matched (a 404 of its router, say)
OVERFLOW = "overflow"  # a route past APP_METRICS_MAX_ROUTES


class RouteLabels:
    """The `route` label of a request: its route template (`/items/{id}`, what the app's router put in
    `scope["route"].path`, as Starlette and FastAPI do), never the raw path, so that the series stay
    bounded. The first `most` templates a worker sees keep their own label, later ones share OVERFLOW;
    `fixed` (the platform's own paths) never count toward `most`."""

    def __init__(self, most: int, fixed: Iterable[str] = ()) -> None:
        self.most = most
        self.fixed = frozenset(fixed)
        self.counted: set[str] = set()

    def label(self, scope: Any) -> str:
        route = scope.get("route")
        path = route if isinstance(route, str) else getattr(route, "path", None)
        if not isinstance(path, str) or not path:
            return UNMATCHED
        if path in self.counted or path in self.fixed:
            return path
        if len(self.counted) < self.most:
            self.counted.add(path)
            return path
        return OVERFLOW


def exposition() -> tuple[bytes, str]:
    REQUEST_METRICS.write()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
