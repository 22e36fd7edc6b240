"""The event-loop probe of every worker, for any app: the platform starts it once the app has started.

A timer every APP_LOOP_LAG_INTERVAL seconds notes how late it fired: how long the loop was busy with other
work (a blocking call in an `async def`, a long callback, a full ready queue) before it could run it, and
writes the time it ran (the heartbeat gauge): its age tells a reader how long the loop has been stalled
right now — a stalled loop writes nothing, and a worker killed while stalled never reports its last lag.
Once a second it writes this worker's other gauges (metrics.py): the largest lateness of that second, the
99th percentile over the last WINDOW_S, and what the worker holds and uses — requests in flight and
answered, WebSockets open, resident memory, CPU time. The lag histogram gets the second's samples in one
write per bucket.

Cost, measured in docs/PERFORMANCE.md: about 10 timer callbacks with a gauge write each, and one write of
8 gauges, per second: under a tenth of a percent of one CPU per worker.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
from bisect import bisect_left
from collections import deque

from service.platform import metrics

WINDOW_S = 10.0  # the p99's window
WRITE_EVERY_S = 1.0


class ResidentMemory:
    """This process's resident set size: /proc/self/statm, read again through one open descriptor; where
    there is none, the peak (getrusage)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self.fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self.fd = None

    def bytes(self) -> int:
        if self.fd is not None:
            try:
                return int(os.pread(self.fd, 128, 0).split()[1]) * self.page
            except (OSError, IndexError, ValueError):
                pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class LoopWatch:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=max(1, round(WINDOW_S / interval)))
        self.second_max = 0.0
        self.lag_sum = 0.0
        self.buckets = [0] * len(metrics.LAG_BUCKETS)
        self.handle: asyncio.TimerHandle | None = None
        self.due = 0.0
        self.next_write = 0.0
        self.memory = ResidentMemory()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        metrics.WORKER_STARTED.set(time.time())
        now = loop.time()
        self.write()
        self.next_write = now + WRITE_EVERY_S
        self.schedule(loop, now)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.memory.close()

    def schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        self.due = now + self.interval
        self.handle = loop.call_at(self.due, self.tick, loop)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        lag = (
            now - self.due if now > self.due else 0.0
        )  # asyncio runs a timer up to its clock resolution early
        self.samples.append(lag)
        if lag > self.second_max:
            self.second_max = lag
        self.lag_sum += lag
        self.buckets[bisect_left(metrics.LAG_BUCKETS, lag)] += 1
        metrics.LOOP_HEARTBEAT.set(time.time())  # every tick: a reader sees a stall one interval in
        if now >= self.next_write:
            self.next_write = now + WRITE_EVERY_S
            self.write()
        self.schedule(loop, now)

    def write(self) -> None:
        metrics.LOOP_LAG_MAX.set(self.second_max)
        metrics.LOOP_LAG_P99.set(percentile(list(self.samples), 0.99))
        self.second_max = 0.0
        if self.lag_sum or any(self.buckets):
            histogram = metrics.LOOP_LAG
            histogram._sum.inc(self.lag_sum)  # what Histogram.observe writes, once per bucket (metrics.py)
            for index, observed in enumerate(self.buckets):
                if observed:
                    histogram._buckets[index].inc(observed)
            self.lag_sum, self.buckets = 0.0, [0] * len(self.buckets)
        counts = metrics.REQUEST_METRICS
        metrics.WORKER_IN_FLIGHT.set(counts.in_flight)
        metrics.WORKER_SERVED.set(counts.served)
        metrics.WORKER_WEBSOCKETS.set(counts.websockets)
        metrics.WORKER_RSS.set(self.memory.bytes())
        metrics.WORKER_CPU.set(time.process_time())
        metrics.LOOP_HEARTBEAT.set(time.time())
