"""The sampler: a thread that reads a stack once a second (sources.py) and appends one JSON line per sample
(series.py) to a file in the run's report directory; `beside(handle, path)` runs it for a block.

It costs the stack what it reads: one metrics request a second per app instance (answered by one worker,
which it counts among its requests), one stub_status request, and the access lines nginx writes anyway.
Its own CPU is in every sample (`sampler_cpu_percent`); docs/PERFORMANCE.md has the bench row beside it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.stackctl import stack
from loadtest.sampler.series import Tracker
from loadtest.sampler.sources import Raw, Source, describe, source_for

SERIES_FILE = "stack-series.jsonl"
INTERVAL_S = 1.0


class Sampler:
    def __init__(
        self, source: Source, path: Path, interval: float = INTERVAL_S, lag_interval: float = 0.1
    ) -> None:
        self.source = source
        self.path = path
        self.interval = interval
        self.tracker = Tracker(interval=lag_interval)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="stack-sampler", daemon=True)
        self.samples = 0
        self.cpu_seconds = 0.0

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.tracker.started_at = time.time()
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.source.close()

    def run(self) -> None:
        due = time.monotonic()
        cpu_before = time.thread_time()
        with self.path.open("a") as out:
            while not self.stopping.wait(max(0.0, due - time.monotonic())):
                started = time.monotonic()
                due = started + self.interval  # a late sample does not bunch the next ones
                try:
                    raw = self.source.read()
                except Exception as error:  # a sample that breaks is a sample saying why
                    raw = Raw(time.time(), errors=[f"sampler: {describe(error)}"])
                cpu = time.thread_time()
                spent, cpu_before = cpu - cpu_before, cpu
                self.cpu_seconds += spent
                span = max(self.interval, time.monotonic() - started)
                sample = self.tracker.sample(raw, spent / span * 100 if self.samples else 0.0)
                out.write(json.dumps(sample, separators=(",", ":")) + "\n")
                out.flush()
                self.samples += 1


@contextlib.contextmanager
def beside(handle: stack.Handle | None, path: Path) -> Iterator[Sampler | None]:
    """The sampler against `handle`'s stack for the block (nothing when there is no handle: a HOST that is
    not a stack this process knows)."""
    if handle is None:
        yield None
        return
    sampler = Sampler(source_for(handle), path, lag_interval=handle.settings.app_loop_lag_interval)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def read_series(path: Path) -> list[dict[str, Any]]:
    samples = []
    if path.is_file():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                samples.append(json.loads(line))
    return samples
