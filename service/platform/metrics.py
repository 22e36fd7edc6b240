"""Prometheus metrics, aggregated over all gunicorn workers when PROMETHEUS_MULTIPROC_DIR is set.

Requests are counted through REQUEST_METRICS (see RequestMetrics for why). The `app_worker_*` and
`app_event_loop_*` gauges are per worker (multiprocess_mode="liveall": a `pid` label, gone with the
worker): loopwatch.py writes them once a second, the heartbeat at every tick of its timer. Worker exits
come from the gunicorn master's record (exits.py), through ExitsCollector.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from service.platform import exits

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


# Per worker, written once a second by loopwatch.LoopWatch.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))
LOOP_LAG = Histogram(
    "app_event_loop_lag_seconds",
    "How late the event-loop probe's timer fired (APP_LOOP_LAG_INTERVAL), all workers",
    buckets=LAG_BUCKETS,
)
LOOP_LAG_MAX = Gauge(
    "app_event_loop_lag_max_seconds", "Largest timer lateness in the last second", multiprocess_mode="liveall"
)
LOOP_LAG_P99 = Gauge(
    "app_event_loop_lag_p99_seconds",
    "99th percentile of timer lateness over the last 10 s",
    multiprocess_mode="liveall",
)
LOOP_HEARTBEAT = Gauge(
    "app_event_loop_heartbeat_seconds",
    "Unix time the probe last ran: its age less APP_LOOP_LAG_INTERVAL is how long the loop has been stalled",
    multiprocess_mode="liveall",
)
WORKER_STARTED = Gauge(
    "app_worker_start_time_seconds",
    "Unix time the worker's event loop began serving",
    multiprocess_mode="liveall",
)
WORKER_IN_FLIGHT = Gauge(
    "app_worker_requests_in_flight", "HTTP requests this worker is serving", multiprocess_mode="liveall"
)
WORKER_SERVED = Gauge(
    "app_worker_requests_served",
    "HTTP requests this worker has answered since it started",
    multiprocess_mode="liveall",
)
WORKER_WEBSOCKETS = Gauge(
    "app_worker_websockets_open", "WebSocket connections this worker holds open", multiprocess_mode="liveall"
)
WORKER_RSS = Gauge(
    "app_worker_resident_memory_bytes", "Resident memory of this worker process", multiprocess_mode="liveall"
)
WORKER_CPU = Gauge(
    "app_worker_cpu_seconds",
    "CPU time (user + system) this worker process has used",
    multiprocess_mode="liveall",
)
# uvicorn's own 503 at UVICORN_LIMIT_CONCURRENCY (worker.py): it never reaches the app or its metrics.
UVICORN_REJECTED = Counter(
    "app_uvicorn_rejected_total", "Requests uvicorn answered 503 itself at UVICORN_LIMIT_CONCURRENCY"
)


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
        self.served = 0  # HTTP requests answered by this process, for loopwatch's per-worker gauges
        self.websockets = 0
        self.counts: dict[tuple[str, str, int], int] = {}
        self.counters: dict[tuple[str, str, int], Any] = {}
        self.latencies: dict[str, list[float]] = {}  # route -> [sum of seconds, count per bucket...]
        self.timers: dict[str, Any] = {}

    def started(self) -> None:
        self.in_flight += 1
        self.schedule()

    def done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.in_flight -= 1
        self.served += 1
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        latency = self.latencies.get(route)
        if latency is None:
            latency = self.latencies[route] = [0.0] * (1 + len(LATENCY_BUCKETS))
        latency[0] += seconds
        latency[1 + bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bucket with seconds <= le
        self.schedule()

    def websocket_opened(self) -> None:
        self.websockets += 1
        WEBSOCKETS.inc()

    def websocket_closed(self) -> None:
        self.websockets -= 1
        WEBSOCKETS.dec()

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


class ExitsCollector:
    """The master's record of worker exits (exits.py): every reason's count, zero included (so a rate
    starts from 0), and the exit time of the last few workers by pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        state = exits.read(self.directory)
        counts = CounterMetricFamily(
            "app_worker_exits", "Worker processes that ended, by reason", labels=["reason"]
        )
        for reason in (*exits.REASONS, *(r for r in state["counts"] if r not in exits.REASONS)):
            counts.add_metric([reason], float(state["counts"].get(reason, 0)))
        recent = GaugeMetricFamily(
            "app_worker_exit_time_seconds",
            f"Unix time each of the last {exits.RECENT} workers ended, by its pid and reason",
            labels=["worker", "reason"],
        )
        for pid, reason, at in state["recent"]:
            recent.add_metric([str(pid), str(reason)], float(at))
        return [counts, recent]


def exposition() -> tuple[bytes, str]:
    REQUEST_METRICS.write()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(ExitsCollector(Path(directory)))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
