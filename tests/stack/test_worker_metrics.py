"""The per-worker series of a real gunicorn master and its workers, on nginx's status port: one series per
live worker by pid, gone with it, and why each worker ended (service/platform/exits.py) — killed, told to
stop, recycled, replaced by a reload."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx2
import pytest

from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack


def exposition(stack: Stack) -> list[str]:
    return httpx2.get(f"{stack.status_url}/metrics", timeout=5).text.splitlines()


def pids_of(stack: Stack, name: str) -> set[int]:
    prefix = f'{name}{{pid="'
    return {
        int(line[len(prefix) :].split('"', 1)[0]) for line in exposition(stack) if line.startswith(prefix)
    }


def ended(stack: Stack) -> dict[int, str]:
    """pid -> reason, from app_worker_exit_time_seconds{reason=..., worker=...}."""
    found = {}
    for line in exposition(stack):
        if line.startswith("app_worker_exit_time_seconds{"):
            labels = dict(
                part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            found[int(labels["worker"].strip('"'))] = labels["reason"].strip('"')
    return found


def wait_until_ended(stack: Stack, pid: int, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        reason = ended(stack).get(pid)
        if reason is not None:
            return reason
        time.sleep(0.2)
    raise AssertionError(f"worker {pid} not recorded as ended within {within} s: {ended(stack)}")


def live_workers(stack: Stack, count: int, within: float = 20.0) -> set[int]:
    """The worker pids once `count` of them serve and each has written its gauges."""
    assert stack.handle is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = set(stack.handle.worker_pids())
        if len(pids) == count and pids_of(stack, "app_worker_start_time_seconds") == pids:
            return pids
        time.sleep(0.2)
    raise AssertionError(f"{stack.handle.worker_pids()} vs {pids_of(stack, 'app_worker_start_time_seconds')}")


def test_each_live_worker_has_its_series_and_each_end_its_reason(tmp_path: Path) -> None:
    # No small request limit until the reload below sets one: every /metrics poll of this test is a request
    # too, and a worker that reached its limit while the test waited out a reload ended, rightly, as
    # `recycle` (seen at load average 10).
    quick = make_stack(tmp_path / "run", UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN="3", WEB_CONCURRENCY="2")
    with running(quick) as stack:
        assert stack.handle is not None
        first = live_workers(stack, 2)
        for name in (
            "app_worker_requests_in_flight",
            "app_worker_requests_served",
            "app_worker_websockets_open",
            "app_worker_resident_memory_bytes",
            "app_worker_cpu_seconds",
            "app_event_loop_lag_max_seconds",
            "app_event_loop_lag_p99_seconds",
            "app_event_loop_heartbeat_seconds",
        ):
            assert pids_of(stack, name) == first, name
        assert 'app_worker_exits_total{reason="crash"} 0.0' in exposition(stack)

        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        assert wait_until_ended(stack, killed) == "crash"
        assert killed not in pids_of(stack, "app_worker_start_time_seconds"), "a dead worker's series go"

        termed = max(first)
        os.kill(termed, signal.SIGTERM)
        assert wait_until_ended(stack, termed) == "terminated"

        before = live_workers(stack, 2)
        limit = {"GUNICORN_MAX_REQUESTS": "40", "GUNICORN_MAX_REQUESTS_JITTER": "10"}
        stack.handle = stack.handle.reload(**limit)
        assert {wait_until_ended(stack, pid) for pid in before} == {"reload"}
        counts = [line for line in exposition(stack) if line.startswith("app_worker_exits_total")]
        assert 'app_worker_exits_total{reason="reload"} 2.0' in counts, counts

        serving = live_workers(stack, 2)
        with httpx2.Client(base_url=stack.url) as client:
            for _ in range(120):  # past 40-50 requests on either worker
                client.get("/api/ping")
        recycled = [pid for pid in serving if ended(stack).get(pid)]
        deadline = time.monotonic() + 30
        while not recycled and time.monotonic() < deadline:
            time.sleep(0.2)
            recycled = [pid for pid in serving if ended(stack).get(pid)]
        assert recycled and {ended(stack)[pid] for pid in recycled} == {"recycle"}
