"""The stack sampler (loadtest/sampler) against a container stack, for the compose and swarm tests: sampled
beside a little load (pings, a few held /api/slow requests, an unknown path) while one worker is killed
inside its container, then the series checked — every app container's workers with their numbers, the
kill and its replacement, nginx's numbers, and answers by status and by layer."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from deploy.stackctl import stack as stackctl
from loadtest.sampler.sampler import SERIES_FILE, beside, read_series
from tests.support.docker import docker

Sample = dict[str, Any]
HELD = 4  # /api/slow requests held at once: the workers' requests in flight
SLOW_DELAY = 1.5  # s, inside the tier's APP_REQUEST_TIMEOUT (2 s)


def wait_for(
    series: Path, found: Callable[[list[Sample]], list[Any]], what: str, within: float = 30.0
) -> list[Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = found(read_series(series))
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"no sample within {within:.0f} s has {what}: {read_series(series)[-3:]}")


def load(url: str, stop: threading.Event) -> None:
    with httpx2.Client(base_url=url, timeout=10) as client:
        sent = 0
        while not stop.is_set():
            # The test SIGKILLs a worker: a request it was answering ends mid-body, and the load goes on.
            with contextlib.suppress(httpx2.HTTPError):
                client.get("/nope" if sent % 50 == 0 else "/api/ping")
            sent += 1


def hold(url: str, stop: threading.Event) -> None:
    with httpx2.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx2.HTTPError):
                client.get("/api/slow", params={"delay": SLOW_DELAY})


def sampled_while_a_worker_is_killed(
    handle: stackctl.Handle, env: dict[str, str], instances: list[str], report_dir: Path
) -> tuple[list[Sample], dict[str, Any]]:
    """The samples of a run that kills (SIGKILL, `docker exec`) a worker of `instances[0]` once every
    instance's workers are in the series, and ends once its replacement is; and the killed worker."""
    series = report_dir / SERIES_FILE
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(handle.url, stop))]
    threads += [threading.Thread(target=hold, args=(handle.url, stop)) for _ in range(HELD)]
    with beside(handle, series):
        for thread in threads:
            thread.start()
        try:

            def of_every_instance(samples: list[Sample]) -> list[dict[str, Any]]:
                """The workers of the last sample, once that is the third with every instance's (rates
                need two)."""
                every = [
                    s["workers"] for s in samples if {w["instance"] for w in s["workers"]} == set(instances)
                ]
                return every[-1] if len(every) >= 3 else []

            def replacement(samples: list[Sample]) -> list[dict[str, Any]]:
                return [
                    started
                    for sample in samples
                    for started in sample["started"]
                    if started["instance"] == killed["instance"] and started["pid"] != killed["pid"]
                ]

            every = wait_for(series, of_every_instance, f"workers of every app container {instances}")
            killed = next(w for w in every if w["instance"] == instances[0])
            signalled = docker("exec", killed["instance"], "sh", "-c", f"kill -9 {killed['pid']}", env=env)
            assert signalled.returncode == 0, signalled.stderr
            wait_for(series, replacement, f"a new worker in {killed['instance']} after {killed['pid']}")
            time.sleep(2)  # a sample or two of the replacement serving
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    return read_series(series), killed


def assert_series_sane(samples: list[Sample], instances: list[str], killed: dict[str, Any]) -> None:
    """What stack-series.jsonl must show of a container stack while one worker is killed."""
    assert samples, "no sample written"
    rows = [w for s in samples for w in s["workers"]]
    assert {w["instance"] for w in rows} == set(instances), "every app container's workers"
    assert all(w["id"] == f"{w['instance']}:{w['pid']}" and w["pid"] > 0 for w in rows)
    assert all(10 < w["rss_mb"] < 1000 and 0 <= w["lag_max_ms"] < 5000 for w in rows), rows
    cpu = [w["cpu_percent"] for w in rows if w["cpu_percent"] is not None]
    assert cpu and all(0 <= c <= 200 for c in cpu) and max(cpu) > 0, cpu
    for instance in instances:
        served = [w["rps"] for w in rows if w["instance"] == instance and w["rps"]]
        assert served, f"{instance}: its workers' requests/s"
    in_flight = [sum(w["in_flight"] for w in s["workers"]) for s in samples]
    assert 1 <= max(in_flight) <= HELD + 5, f"{HELD} /api/slow held at once: {in_flight}"

    ends = [e for s in samples for e in s["ended"]]
    assert [(e["id"], e["reason"]) for e in ends] == [(killed["id"], "crash")], ends
    after = next(i for i, s in enumerate(samples) if s["ended"])
    starts = [st for s in samples[after:] for st in s["started"]]
    assert [st["instance"] for st in starts] == [killed["instance"]], starts
    assert samples[-1]["workers_alive"] == samples[after - 1]["workers_alive"], "the replacement serves"

    read = [s["nginx"] for s in samples if "active" in s["nginx"]]
    assert len(read) >= len(samples) - 1, "nginx's stub_status in every sample"
    assert max(n.get("rps", 0) for n in read) > 10 and max(n["active"] for n in read) >= 1
    assert any("upstream_ms" in s["nginx"] for s in samples), "nginx's upstream times"
    answers: Counter[str] = Counter()
    app: Counter[str] = Counter()
    for s in samples[1:]:  # the first sample reads the app's counters as they were: its baseline
        answers.update(s["answers"])
        app.update(s["by_layer"].get("app", {}))
    assert answers["200"] > 50 and answers["404"] >= 1, answers
    # The app's counters and nginx's lines are read a moment apart (a worker writes its counts once a
    # second, nginx its buffered log each second): a few may come a sample later, more on a loaded host.
    slack = max(2, answers["404"] // 10)
    assert abs(app["404"] - answers["404"]) <= slack, f"the app's own 404s: {app}, all: {answers}"
    unread = [s["errors"] for s in samples if s["errors"]]
    assert len(unread) <= len(samples) // 4, f"samples that could not read the stack: {unread}"
