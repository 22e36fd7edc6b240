"""The sampler's reading of what a stack says (loadtest/sampler/): the platform's metrics, nginx's
stub_status and access lines, and the samples made from them over time; the charts drawn from samples.
Against real stacks: test_locust_runs.py (the blocking scenario, the web UI's Stack tab), test_drill.py."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtest.sampler import charts
from loadtest.sampler.exposition import Exposition
from loadtest.sampler.series import (
    NGINX_SCHEMA,
    SCHEMA,
    TIMED,
    WORKER_SCHEMA,
    Tracker,
    access,
    stub_status,
)
from loadtest.sampler.sources import AGENT, Agent, AppScrape, LogTail, Raw
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
STUB = (
    "Active connections: 7 \nserver accepts handled requests\n 10 10 120 \n"
    "Reading: 1 Writing: 4 Waiting: 2 \n"
)


def line(status: int, header: str = "0.001", response: str = "0.002", upstream: str = "200") -> str:
    return json.dumps(
        {
            "time": "2026-01-01T00:00:00+00:00",
            "request_id": "x",
            "uri": "/api/ping",
            "status": status,
            "bytes_sent": 10,
            "request_time": 0.002,
            "upstream_addr": "127.0.0.1:8000",
            "upstream_status": upstream,
            "upstream_connect_time": "0.000",
            "upstream_header_time": header,
            "upstream_response_time": response,
            "user_agent": "test",
        },
        separators=(",", ":"),
    )


def worker_metrics(workers: dict[int, dict[str, float]], exits: list[tuple[int, str, float]] = ()) -> str:
    """The platform's exposition for these workers (pid -> gauge values) and recorded exits."""
    lines = []
    for pid, values in workers.items():
        for name, value in values.items():
            lines.append(f'app_{name}{{pid="{pid}"}} {value}')
    for pid, reason, at in exits:
        lines.append(f'app_worker_exit_time_seconds{{reason="{reason}",worker="{pid}"}} {at}')
    return "\n".join(lines) + "\n"


def gauges(
    t: float, started: float = 0.0, served: float = 0, cpu: float = 0.0, **more: float
) -> dict[str, float]:
    return {
        "worker_start_time_seconds": started,
        "worker_requests_served": served,
        "worker_cpu_seconds": cpu,
        "event_loop_heartbeat_seconds": t,
        **more,
    }


def test_the_exposition_is_read_with_labels_and_per_pid() -> None:
    text = (
        "# HELP app_requests_total x\n"
        'app_requests_total{method="GET",route="/a \\"b\\"",status="200"} 3.0\n'
        'app_worker_requests_in_flight{pid="12"} 2.0\n'
        'app_worker_requests_in_flight{pid="13"} 0.0\n'
        "app_uvicorn_rejected_total 4.0\n"
        "app_websockets_open NaN\n"
    )
    exposition = Exposition(text)
    assert exposition.get("app_requests_total") == [
        ({"method": "GET", "route": '/a "b"', "status": "200"}, 3.0)
    ]
    assert exposition.by_pid("app_worker_requests_in_flight") == {12: 2.0, 13: 0.0}
    assert exposition.total("app_uvicorn_rejected_total") == 4.0
    assert exposition.get("app_websockets_open") == []


def test_stub_status_and_access_lines_are_read() -> None:
    assert stub_status(STUB) == {"active": 7, "requests": 120, "reading": 1, "writing": 4, "waiting": 2}
    assert stub_status("no nginx here") is None
    lines = [
        line(200),
        line(200, response="0.010"),
        line(502, header="-", response="0.000", upstream="502"),  # nginx: the app closed the connection
        line(503, header="0.001", upstream="503"),  # an answer of the app (or uvicorn)
        line(504, header="0.001, -", response="1.000, 2.000", upstream="502, 504"),  # retried, then no answer
        line(429, header="", response="", upstream=""),  # nginx's own limit: no upstream at all
        "2026/01/01 00:00:00 [error] 12#12: *1 upstream prematurely closed connection",
    ]
    found = access("\n".join(lines).encode() + b"\n")
    assert found.answers == {"200": 2, "502": 1, "503": 1, "504": 1, "429": 1}
    assert found.nginx_errors == {"502": 1, "504": 1, "429": 1}
    assert sorted(found.upstream_ms) == [0.0, 2.0, 2.0, 10.0, 3000.0], "every attempt counts; none: no time"
    # Another field order: read line by line with json.
    reordered = json.dumps(
        {"upstream_response_time": "0.5", "status": 500, "upstream_header_time": "-"}
    ).encode()
    assert access(reordered).nginx_errors == {"500": 1} and access(reordered).upstream_ms == [500.0]


def test_a_loaded_sample_reads_the_upstream_time_of_timed_lines_spread_over_it_and_every_status() -> None:
    # Line n answered in n + 1 ms; one 502 of nginx's own in the middle. Past TIMED lines the times come from
    # evenly spaced offsets: each line at most once, from the whole sample.
    count = 5 * TIMED
    lines = [line(200, response=f"{(n + 1) / 1000:.3f}") for n in range(count)]
    lines[count // 2] = line(502, header="-", response="0.000", upstream="502")
    found = access("\n".join(lines).encode() + b"\n")
    assert found.answers == {"200": count - 1, "502": 1}
    assert found.nginx_errors == {"502": 1}
    times = found.upstream_ms
    assert TIMED - 2 <= len(times) <= TIMED and len(set(times)) == len(times), len(times)
    answered = sorted(t for t in times if t > 0)  # the 502's 0 ms aside
    assert answered[0] < 10 and answered[-1] > count - 20, (answered[0], answered[-1])
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    assert max(gaps) <= 2 * count // TIMED, "spread evenly: about one line in five"


def test_the_log_tail_reads_new_complete_lines_and_follows_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "nginx.log"
    log.write_text("old\n")
    tail = LogTail(log)
    assert tail.read() == b""
    with log.open("a") as out:
        out.write("one\ntwo\nhal")
    assert tail.read() == b"one\ntwo\n"
    with log.open("a") as out:
        out.write("f\n")
    assert tail.read() == b"half\n"
    with log.open("a") as out:
        out.write("last before the rotation\n")
    log.rename(tmp_path / "nginx.log.1")
    log.write_text("new\n")
    assert tail.read() == b"last before the rotation\nnew\n", "the old file's rest first, none lost"
    log.write_text("x\n")  # cut short in place (below the offset held), then written again
    assert tail.read() == b"x\n"
    tail.close()


def test_the_log_tail_follows_a_file_that_appears_later(tmp_path: Path) -> None:
    log = tmp_path / "nginx.log"
    tail = LogTail(log)
    assert tail.read() == b""
    log.write_text("first\n")
    assert tail.read() == b"first\n"
    tail.close()


def raw(
    t: float, text: str | None, instance: str = "", stub: str | None = None, lines: list[str] = ()
) -> Raw:
    scrape = AppScrape(instance, text, "" if text else "ReadTimeout")
    log = "".join(f"{line}\n" for line in lines).encode()
    return Raw(t, apps=[scrape], stub=stub, log=log, own_nginx_requests=1 if stub else 0)


def test_samples_follow_workers_from_start_to_end_with_rates_and_reasons() -> None:
    tracker = Tracker(started_at=100.0, interval=0.1)
    first = tracker.sample(raw(100.0, worker_metrics({10: gauges(100.0, 90.0, 50, 1.0)}), stub=STUB))
    assert first["workers_alive"] == 1 and first["started"] == [] and first["ended"] == []
    assert (
        first["workers"][0]["rps"] is None and first["nginx"]["active"] == 7 and "rps" not in first["nginx"]
    )

    metrics = worker_metrics(
        {10: gauges(101.0, 90.0, 80, 1.5, event_loop_lag_max_seconds=0.25), 11: gauges(101.0, 100.6)},
        exits=[(9, "timeout", 95.0)],  # recorded before the sampler started: old news
    )
    stub = STUB.replace(" 120 ", " 171 ")
    second = tracker.sample(raw(101.0, metrics, stub=stub, lines=[line(200)] * 3 + [line(502, "-")]))
    assert [w["id"] for w in second["workers"]] == ["10", "11"]
    old = second["workers"][0]
    assert (old["rps"], old["cpu_percent"], old["lag_max_ms"], old["stalled"]) == (30.0, 50.0, 250.0, False)
    assert second["started"] == [{"id": "11", "instance": "", "pid": 11, "at": 100.6}]
    assert second["nginx"]["rps"] == 50.0, "171 - 120 less the sampler's own stub_status request"
    assert second["answers"] == {"200": 3, "502": 1} and second["by_layer"] == {"nginx": {"502": 1}}

    stalled = worker_metrics({10: gauges(101.0, 90.0, 80, 1.5), 11: gauges(103.5, 100.6)})
    third = tracker.sample(raw(103.5, stalled))
    assert third["workers"][0]["stalled"] and third["workers"][0]["lag_max_ms"] == 2300.0

    # The master recorded 10's end; 11's series is gone with no record.
    ended = worker_metrics({12: gauges(104.5, 104.2)}, exits=[(10, "timeout", 104.0)])
    fourth = tracker.sample(raw(104.5, ended))
    assert sorted((e["id"], e["reason"]) for e in fourth["ended"]) == [("10", "timeout"), ("11", "gone")]
    assert [s["id"] for s in fourth["started"]] == ["12"] and fourth["workers_alive"] == 1


def test_an_instance_that_does_not_answer_keeps_its_workers_and_counters_restart_from_zero() -> None:
    tracker = Tracker()
    text = 'app_requests_total{method="GET",route="/x",status="504"} 5\napp_uvicorn_rejected_total 2\n'
    both = worker_metrics({1: gauges(1.0)}) + text
    tracker.sample(raw(1.0, both, instance="app-1"))
    silent = tracker.sample(raw(2.0, None, instance="app-1"))
    assert (
        silent["workers_alive"] == 1
        and silent["ended"] == []
        and silent["errors"] == ["app app-1: ReadTimeout"]
    )
    more = worker_metrics({1: gauges(3.0)}) + text.replace("} 5", "} 8").replace(
        "rejected_total 2", "rejected_total 1"
    )
    back = tracker.sample(raw(3.0, more, instance="app-1"))
    assert back["by_layer"] == {"app": {"504": 3}, "uvicorn": {"503": 1}}, "1 < 2: a restarted master, from 0"
    assert back["workers"][0]["id"] == "app-1:1"
    unread = tracker.sample(Raw(3.5, errors=["docker: FileNotFoundError"]))
    assert unread["workers_alive"] == 1 and unread["ended"] == [], "nothing read: nothing ended"
    gone = tracker.sample(Raw(4.0, apps=[AppScrape("app-2", worker_metrics({}))]))
    assert [(e["id"], e["reason"]) for e in gone["ended"]] == [("app-1:1", "gone")], "its container went"


def test_a_first_error_of_a_known_instance_counts_and_a_pid_back_with_another_start_is_another_worker() -> (
    None
):
    tracker = Tracker()
    before = 'app_requests_total{method="GET",route="/x",status="404"} 9\n'  # before the run: not counted
    tracker.sample(raw(1.0, worker_metrics({7: gauges(1.0, 0.5)}) + before, instance="app-1"))
    timeout = 'app_requests_total{method="GET",route="/api/slow",status="504"} 2\n'
    second = tracker.sample(
        raw(2.0, worker_metrics({7: gauges(2.0, 0.5)}) + before + timeout, instance="app-1")
    )
    assert second["by_layer"] == {"app": {"504": 2}}, "the route's first 504s, not lost as a baseline"
    # The container restarted: its worker is pid 7 again, started later, its counters from 0.
    third = tracker.sample(raw(3.0, worker_metrics({7: gauges(3.0, 2.8, served=4)}), instance="app-1"))
    assert [(e["id"], e["reason"]) for e in third["ended"]] == [("app-1:7", "gone")]
    assert [s["id"] for s in third["started"]] == ["app-1:7"] and third["workers"][0]["rps"] is None


def test_every_field_of_a_sample_is_documented_in_the_loadtest_readme() -> None:
    readme = (ROOT / "loadtest" / "README.md").read_text()
    for field in [*SCHEMA, *WORKER_SCHEMA, *NGINX_SCHEMA]:
        assert f"`{field}`" in readme, field
    sample = Tracker().sample(raw(1.0, worker_metrics({1: gauges(1.0)}), stub=STUB))
    assert set(sample) == set(SCHEMA)
    assert set(sample["workers"][0]) == set(WORKER_SCHEMA)
    assert set(sample["nginx"]) <= set(NGINX_SCHEMA)


def test_charts_are_made_of_the_samples_with_worker_ends_and_events_marked() -> None:
    tracker = Tracker()
    samples = [
        tracker.sample(raw(1.0, worker_metrics({1: gauges(1.0, served=0)}), stub=STUB)),
        tracker.sample(raw(2.0, worker_metrics({1: gauges(2.0, served=5, event_loop_lag_max_seconds=0.3)}))),
        tracker.sample(raw(3.0, worker_metrics({2: gauges(3.0, 2.5)}, exits=[(1, "crash", 2.6)]))),
    ]
    drawn = charts.specs(samples, client=[(2.0, 4.0, 0.0)], events=[(2.5, "SIGKILL")])
    titles = [chart["title"] for chart in drawn["charts"]]
    assert titles[0] == "Requests/s" and "Workers alive" in titles
    assert "WebSockets open, per worker" not in titles, "a chart with nothing but zeros is left out"
    kinds = {(m["kind"], m["label"]) for m in drawn["charts"][0]["markers"]}
    assert kinds == {("end", "worker 1 ended: crash"), ("start", "worker 2 started"), ("event", "SIGKILL")}
    assert drawn["findings"][0].startswith("worker 1: event loop lagged 300 ms")
    timeline = charts.timeline_specs(
        samples, closes=[(2.2, "1006"), (2.4, "1006")], events=[(2.5, "SIGKILL")]
    )
    closes = next(c for c in timeline["charts"] if c["title"].startswith("WebSocket closes"))
    assert closes["series"][0] == {"name": "close 1006", "points": [[1.0, 0], [2.0, 2], [3.0, 0]]}
    page = charts.embed("<html><body><p>Locust</p></body></html>", charts.section(drawn, "Stack"))
    assert page.index("<p>Locust</p>") < page.index('class="stack-section"') < page.index("</body>")
    assert "<\\/" in charts.as_script_json({"label": "</script>"})


@pytest.mark.loadtest
def test_the_container_agent_answers_each_question_with_the_metrics_and_nginx(loadtest_stack: Stack) -> None:
    """The agent the docker and swarm runtimes run in each app container (`docker exec -i`), run here
    against a local stack: the bind comes from its environment, as it would from the container's."""
    assert loadtest_stack.handle is not None
    settings = loadtest_stack.handle.settings
    command = [sys.executable, "-u", "-c", AGENT, settings.app_metrics_path]
    environment = {"GUNICORN_BIND": settings.gunicorn_bind, "PATH": os.environ["PATH"]}
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment) as agent:
        assert agent.stdin is not None and agent.stdout is not None
        agent.stdin.write(f"127.0.0.1:{settings.nginx_status_port}\n".encode())
        agent.stdin.flush()
        first = json.loads(agent.stdout.readline())
        agent.stdin.write(b"\n")
        agent.stdin.flush()
        second = json.loads(agent.stdout.readline())
        agent.stdin.close()
        assert agent.wait(timeout=10) == 0, "it ends when its stdin closes"
    assert first["error"] == "" and "app_worker_start_time_seconds{pid=" in first["metrics"]
    assert stub_status(first["stub"]) is not None and first["stub_error"] == ""
    assert "stub" not in second and "app_event_loop_heartbeat_seconds" in second["metrics"]


class SlowFirstMetrics(BaseHTTPRequestHandler):
    """/metrics that answers its first request 0.5 s late (within the agent's own 0.8 s), then at once."""

    served = 0

    def do_GET(self) -> None:
        type(self).served += 1
        served = self.served
        if served == 1:
            time.sleep(0.5)
        body = f"app_scrape_number {served}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def slow_first_metrics() -> Iterator[int]:
    SlowFirstMetrics.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowFirstMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_agents_late_answer_is_dropped_not_taken_as_the_next_samples(slow_first_metrics: int) -> None:
    """The AGENT process as the docker and swarm runtimes run it, here without a container."""
    environment = {"GUNICORN_BIND": f"127.0.0.1:{slow_first_metrics}", "PATH": os.environ["PATH"]}
    agent = Agent("app-1", [sys.executable, "-u", "-c", AGENT, "/metrics"], environment)
    try:
        assert agent.ask() == ""
        assert agent.answer(within=0.1) is None, "the sample gave up on it"
        assert agent.ask() == "its agent is still answering an earlier sample"
        time.sleep(1.0)  # the late answer came meanwhile
        assert agent.ask() == ""
        answer = agent.answer(within=2.0)
        assert answer is not None and answer["metrics"] == "app_scrape_number 2\n", answer
    finally:
        agent.close()
    assert agent.process.returncode == 0 and agent.process.stdout is not None and agent.process.stdout.closed
