"""Locust's own CPU: the peak of each Locust process during a run. A run above the CPU limit measured
Locust, not the stack."""

from __future__ import annotations

from typing import Any

import gevent
import psutil
from locust import events
from locust.env import Environment

from loadtest.users.hooks import listener

CPU_SAMPLE_SECONDS = 2.0


class CpuWatch:
    """Peak CPU of this Locust process, sampled every CPU_SAMPLE_SECONDS (Locust itself checks every 10 s,
    which a short run never reaches). Workers send theirs to the master with every stats report."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0.0
        self.peaks: dict[str, float] = {}
        self.greenlet: gevent.Greenlet[[], None] | None = None

    def start(self) -> None:
        self.peak = 0.0
        self.peaks.clear()
        self.process.cpu_percent()
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self.sample)

    def sample(self) -> None:
        while True:
            gevent.sleep(CPU_SAMPLE_SECONDS)
            self.peak = max(self.peak, self.process.cpu_percent())


cpu_watch = CpuWatch()


@listener(events.test_start)
def start_cpu_watch(environment: Environment, **_: Any) -> None:
    cpu_watch.start()


@listener(events.report_to_master)
def send_cpu_peak(client_id: str, data: dict[str, Any]) -> None:
    data["loadtest_cpu_peak"] = cpu_watch.peak


@listener(events.worker_report)
def receive_cpu_peak(client_id: str, data: dict[str, Any]) -> None:
    if "loadtest_cpu_peak" in data:
        name = f"worker {client_id}"
        cpu_watch.peaks[name] = max(cpu_watch.peaks.get(name, 0.0), float(data["loadtest_cpu_peak"]))
