"""The event-loop probe every app gets inside the platform (service/platform/loopwatch.py): how late its
timer fires, and the worker's own numbers, once a second; and how the master names each worker's end
(service/platform/exits.py). The real gunicorn side: tests/stack/test_worker_metrics.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.platform import exits, loopwatch, metrics
from service.platform.asgi import Platform
from service.settings import load_settings
from tests.service.test_platform import sample


async def block(request: Request) -> PlainTextResponse:
    time.sleep(float(request.query_params["s"]))  # sync code in async def: the loop stops
    return PlainTextResponse("done")


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


def blocking_app() -> Starlette:
    return Starlette(routes=[Route("/block", block), Route("/ping", ping)])


def wait_for(name: str, at_least: float, within: float = 3.0) -> float:
    deadline = time.monotonic() + within
    value = sample(name)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = sample(name)
    return value


@pytest.fixture
def platform() -> Iterator[TestClient]:
    with TestClient(Platform(blocking_app(), load_settings(app_loop_lag_interval=0.05))) as client:
        yield client


def test_a_blocked_loop_shows_as_lag_of_at_least_the_block_less_one_interval(platform: TestClient) -> None:
    # The timer was due at most one interval (0.05 s) after the block began: it fires that much less late.
    lag_sum = sample("app_event_loop_lag_seconds_sum")
    for _ in range(3):
        assert platform.get("/block", params={"s": 0.3}).text == "done"

    assert wait_for("app_event_loop_lag_max_seconds", 0.25) >= 0.25
    assert sample("app_event_loop_lag_p99_seconds") >= 0.25, "3 late timers of 200 in the 10 s window"
    assert sample("app_event_loop_lag_seconds_sum") - lag_sum >= 0.75
    assert sample("app_event_loop_lag_seconds_bucket", le="0.25") + 3 <= sample(
        "app_event_loop_lag_seconds_bucket", le="0.5"
    ), "each late timer falls in the 0.25-0.5 s bucket"
    # The maximum is the last second's: with the loop free again it falls back.
    time.sleep(2.2)
    assert sample("app_event_loop_lag_max_seconds") < 0.1


def test_the_worker_gauges_follow_what_it_serves(platform: TestClient) -> None:
    served = sample("app_worker_requests_served")
    for _ in range(5):
        platform.get("/ping")
    assert wait_for("app_worker_requests_served", served + 5) >= served + 5
    assert sample("app_worker_requests_in_flight") == 0
    assert sample("app_worker_resident_memory_bytes") > 10 * 2**20
    assert 0 < sample("app_worker_cpu_seconds") <= time.process_time()
    assert time.time() - sample("app_event_loop_heartbeat_seconds") < 1.5
    assert sample("app_worker_start_time_seconds") <= time.time()


def test_the_probe_is_off_at_zero() -> None:
    with TestClient(Platform(blocking_app(), load_settings(app_loop_lag_interval=0))) as client:
        before = sample("app_event_loop_heartbeat_seconds")
        time.sleep(1.2)
        client.get("/ping")
        assert sample("app_event_loop_heartbeat_seconds") == before


def test_percentile_is_the_nearest_rank() -> None:
    assert loopwatch.percentile([], 0.99) == 0.0
    values = [i / 100 for i in range(100)]
    assert loopwatch.percentile(values, 0.99) == 0.98
    assert loopwatch.percentile([0.0] * 99 + [3.0], 0.99) == 0.0
    assert loopwatch.percentile([0.0] * 98 + [3.0, 3.0], 0.99) == 3.0


def server(listening: bool = True, reload_age: int | None = None, reload_at: float = 0.0) -> SimpleNamespace:
    found = SimpleNamespace(LISTENERS=["socket"] if listening else [], worker_age=9)
    if reload_age is not None:
        setattr(found, exits.RELOAD_AGE, reload_age)
        setattr(found, exits.RELOAD_AT, reload_at)
    return found


def worker(age: int = 5, aborted: bool = False) -> SimpleNamespace:
    return SimpleNamespace(pid=1234, age=age, aborted=aborted)


@pytest.mark.parametrize(
    ("srv", "wrk", "note", "noted_at", "expected"),
    [
        (server(), worker(aborted=True), "signal", 0.0, "timeout"),
        (server(), worker(), None, 0.0, "crash"),
        (server(), worker(), "recycle", 0.0, "recycle"),
        (server(), worker(), "exit", 0.0, "exit"),
        (server(), worker(), "something new", 0.0, "exit"),
        (server(listening=False), worker(), "signal", 0.0, "stop"),
        (server(reload_age=6, reload_at=100.0), worker(age=5), "signal", 101.0, "reload"),
        (server(reload_age=6, reload_at=100.0), worker(age=5), "signal", 99.0, "terminated"),
        (server(reload_age=6, reload_at=100.0), worker(age=7), "signal", 101.0, "terminated"),
        (server(), worker(), "signal", 0.0, "terminated"),
    ],
)
def test_the_master_names_each_end(
    srv: SimpleNamespace, wrk: SimpleNamespace, note: str | None, noted_at: float, expected: str
) -> None:
    assert exits.reason(srv, wrk, note, noted_at) == expected


def test_exits_are_recorded_counted_and_listed_by_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    exits.leave_note(11, "recycle")
    exits.leave_note(11, "signal")  # the first note stands
    assert exits.worker_ended(server(), SimpleNamespace(pid=11, age=1, aborted=False)) == "recycle"
    assert not (tmp_path / "exit-11").exists()
    assert exits.worker_ended(server(), SimpleNamespace(pid=12, age=1, aborted=True)) == "timeout"
    for pid in range(100, 100 + exits.RECENT):
        exits.worker_ended(server(), SimpleNamespace(pid=pid, age=1, aborted=False))

    families = {family.name: family for family in metrics.ExitsCollector(tmp_path).collect()}
    counts = {s.labels["reason"]: s.value for s in families["app_worker_exits"].samples}
    assert counts == {reason: 0.0 for reason in exits.REASONS} | {"recycle": 1, "timeout": 1, "crash": 16}
    recent = families["app_worker_exit_time_seconds"].samples
    assert len(recent) == exits.RECENT and recent[-1].labels == {"worker": "115", "reason": "crash"}
    exits.clear(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
