"""Real Locust (subprocesses, through loadtest.runner) against a real local stack."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deploy.stackctl.config import ROOT
from deploy.stackctl.ports import free_port
from loadtest.limits import THRESHOLD_EXIT_CODE
from loadtest.runner import Summary, run_headless
from loadtest.sampler.sampler import SERIES_FILE, read_series
from tests.support.browser import open_page
from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.loadtest

HERE = Path(__file__).parent
REPORT_FILES = (
    "report.html",
    "locust_stats.csv",
    "locust_stats_history.csv",
    "locust_failures.csv",
    "locust.json",
    "run.json",
    "summary.json",
    "stack-settings.json",
    "stack.env",
    "stack-series.jsonl",
    "locust.log",
)
ECHO_ROWS = [("WS", "/ws/echo connect"), ("WS", "/ws/echo round-trip")]
TICKER_ROWS = [("WS", "/ws/ticker connect"), ("WS", "/ws/ticker push")]
STREAM_ROWS = [("STREAM", "/api/stream first chunk"), ("STREAM", "/api/stream all chunks")]
SCENARIO_ROWS = {
    "http": [("GET", "/api/ping"), ("POST", "/api/echo"), ("GET", "/api/info")],
    "slow": [("GET", "/api/slow?delay=[s]")],
    "blocking": [("GET", "/api/blocking?delay=[s]"), ("GET", "/api/slow?delay=[s]")],
    "sync": [("GET", "/api/sync?delay=[s]")],
    "websocket": ECHO_ROWS + TICKER_ROWS,
    "stream": [("GET", "/api/stream?chunks=[n]"), *STREAM_ROWS],
    "mixed": [("GET", "/api/ping"), ("GET", "/api/slow?delay=[s]"), *ECHO_ROWS, *TICKER_ROWS, *STREAM_ROWS],
    "rooms": [
        ("POST", "/api/rooms/[room]/messages"),
        ("WS", "/ws/rooms connect"),
        ("WS", "/ws/rooms deliver"),
    ],
}


def run(
    stack: Stack, scenario: str, out: Path, users: int = 3, run_time: str = "4s", **kw: object
) -> Summary:
    return run_headless(
        stack.url,
        scenario,
        users,
        users,
        run_time,
        out_dir=out,
        run_dir=stack.run_dir,
        **kw,  # type: ignore[arg-type]
    )


def explain(summary: Summary) -> str:
    log = (summary.report_dir / "locust.log").read_text()[-2000:]
    return f"exit {summary.exit_code}, errors {summary.errors}\n{log}"


@pytest.mark.parametrize("scenario", list(SCENARIO_ROWS))
def test_scenario_runs_without_failures_and_writes_its_report(
    loadtest_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    if scenario == "blocking":
        monkeypatch.setenv("LOCUST_BLOCKING_DELAY", "0.8")
    mixed = scenario == "mixed"
    summary = run(
        loadtest_stack,
        scenario,
        tmp_path / scenario,
        users=15 if mixed else 9 if scenario == "rooms" else 3,
        run_time="6s" if mixed else "4s",
    )

    assert summary.exit_code == 0, explain(summary)
    assert summary.requests > 0
    assert summary.failures == 0, explain(summary)
    for expected in SCENARIO_ROWS[scenario]:
        row = summary.row(*expected)
        assert row is not None and row["requests"] > 0, f"no {expected} row in {summary.rows}"
    for name in REPORT_FILES:
        assert (summary.report_dir / name).is_file(), name
    settings = json.loads((summary.report_dir / "stack-settings.json").read_text())["settings"]
    assert settings["HTTP_PORT"] == int(loadtest_stack.env["HTTP_PORT"])
    assert settings["WEB_CONCURRENCY"] == 1
    assert json.loads((summary.report_dir / "summary.json").read_text())["requests"] == summary.requests
    with (summary.report_dir / "locust_stats_history.csv").open() as f:
        seconds = [int(r["Timestamp"]) for r in csv.DictReader(f)]
    assert max(seconds) - min(seconds) >= (5 if mixed else 3), "the run ended before its run time"

    if ("WS", "/ws/echo round-trip") in SCENARIO_ROWS[scenario]:
        assert summary.ws_rtt_p50_ms is not None and summary.ws_rtt_p95_ms is not None
        assert 0 <= summary.ws_rtt_p50_ms <= summary.ws_rtt_p95_ms
    else:
        assert summary.ws_rtt_p50_ms is None
    if scenario == "stream":
        # 5 chunks 0.2 s apart: the first arrives long before the last, so nothing buffered the stream.
        first, whole = (summary.row(*key) for key in STREAM_ROWS)
        assert first is not None and whole is not None
        assert first["p50_ms"] < whole["p50_ms"] - 400
    if scenario == "rooms":
        # 8 members over 4 rooms, 1 publisher at 10 messages/s: each message reaches its room's members.
        delivered, published = (
            summary.row("WS", "/ws/rooms deliver"),
            summary.row(*SCENARIO_ROWS[scenario][0]),
        )
        assert delivered is not None and published is not None
        assert delivered["requests"] >= published["requests"], (delivered, published)
        assert summary.row("WS", "/ws/rooms missing") is None, "no member missed a message"
        assert 0 < delivered["p50_ms"] <= delivered["p99_ms"] < 1000, delivered
    if scenario == "blocking":
        # Each blocking call stops the only worker's event loop for 0.8 s; slow requests (1 s) that
        # should finish meanwhile wait for it to end.
        slow = summary.row("GET", "/api/slow?delay=[s]")
        assert slow is not None and slow["max_ms"] > 1400, slow
        assert_the_stall_is_in_the_series_and_the_report(summary.report_dir, blocking_s=0.8)
    assert len(read_series(summary.report_dir / SERIES_FILE)) >= (5 if mixed else 3), "a sample a second"


def assert_the_stall_is_in_the_series_and_the_report(report_dir: Path, blocking_s: float) -> None:
    """The worker that served /api/blocking (the only one) shows an event-loop lag of the blocking delay
    (less the probe's interval, APP_LOOP_LAG_INTERVAL=0.1: the timer was due up to that much after the
    block began); report.html names it and draws the charts in a real browser, without a console error."""
    samples = read_series(report_dir / SERIES_FILE)
    assert {len(sample["workers"]) for sample in samples} == {1}, "WEB_CONCURRENCY=1"
    lags = {(w["id"], w["lag_max_ms"]) for sample in samples for w in sample["workers"]}
    worker, worst = max(lags, key=lambda pair: pair[1])
    assert worst >= (blocking_s - 0.1) * 1000, sorted(lags)
    assert any(w["in_flight"] >= 1 for sample in samples for w in sample["workers"]), "slow requests held"

    dom, console = open_page((report_dir / "report.html").as_uri())
    assert console == [], console
    drawn = re.search(r'class="stack-charts" data-drawn="(\d+)"', dom)
    assert drawn is not None and int(drawn.group(1)) >= 8, dom[-3000:]
    assert dom.count('class="stack-series"') >= 8, "a line in every chart"
    assert f"worker {worker}: event loop" in dom, "the findings name the stalled worker"


def test_a_violated_threshold_makes_the_exit_code_non_zero(
    loadtest_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCUST_MAX_P95", "500")
    slow = run(loadtest_stack, "slow", tmp_path / "p95", users=2, run_time="3s")
    assert slow.exit_code == THRESHOLD_EXIT_CODE, explain(slow)
    assert slow.failures == 0
    assert [v for v in slow.threshold_violations if v.startswith("p95")], slow.threshold_violations
    assert "THRESHOLD VIOLATED: p95" in (slow.report_dir / "report.html").read_text()

    failing = str(HERE / "failing_users.py")
    judged = run(loadtest_stack, failing, tmp_path / "failing", users=2, run_time="3s")
    assert judged.exit_code == THRESHOLD_EXIT_CODE, explain(judged)
    assert judged.fail_ratio == 1.0
    assert [v for v in judged.threshold_violations if v.startswith("failure ratio")]

    unjudged = run(loadtest_stack, failing, tmp_path / "unjudged", users=2, run_time="3s", thresholds=False)
    assert unjudged.exit_code == 0, explain(unjudged)
    assert unjudged.failures > 0 and unjudged.threshold_violations == []


def test_master_and_two_workers_complete_a_run(loadtest_stack: Stack, tmp_path: Path) -> None:
    summary = run(loadtest_stack, "http", tmp_path / "distributed", users=4, workers=2)

    assert summary.exit_code == 0, explain(summary)
    assert summary.requests > 0 and summary.failures == 0
    run_json = json.loads((summary.report_dir / "run.json").read_text())
    assert run_json["workers"] == 2, run_json["cpu"]
    for index in (1, 2):
        assert (
            "Got quit message from master" in (summary.report_dir / f"locust-worker-{index}.log").read_text()
        )


def test_step_shape_ramps_the_users_in_stairs(loadtest_stack: Stack, tmp_path: Path) -> None:
    summary = run(loadtest_stack, "http", tmp_path / "step", users=3, run_time="6s", shape="step")

    assert summary.exit_code == 0, explain(summary)
    with (summary.report_dir / "locust_stats_history.csv").open() as f:
        counts = [int(r["User Count"]) for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    ramp = [c for c in counts if c]
    assert ramp == sorted(ramp), counts
    assert sorted(set(ramp)) == [1, 2, 3], counts


def test_a_locust_process_above_the_cpu_limit_flags_the_run_invalid(
    loadtest_stack: Stack, tmp_path: Path
) -> None:
    # The hog keeps one core busy; a low limit keeps the test honest on a machine that is busy elsewhere.
    hog = str(HERE / "cpu_hog_users.py")
    summary = run(
        loadtest_stack, hog, tmp_path / "hog", users=1, run_time="5s", extra_args=["--cpu-limit", "30"]
    )

    assert summary.cpu_valid is False
    assert summary.cpu_peak_percent is not None and summary.cpu_peak_percent > 30
    assert json.loads((summary.report_dir / "summary.json").read_text())["cpu_valid"] is False
    assert "INVALID RUN" in (summary.report_dir / "report.html").read_text()


def test_websocket_users_reconnect_after_a_reload_closes_them_with_1012(
    loadtest_stack: Stack, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run, loadtest_stack, "websocket", tmp_path / "reload", 3, "9s")
        wait_for_open_websockets(loadtest_stack, 3)
        reloaded = loadtest_stack.stackctl("reload")
        summary = running.result(timeout=120)

    assert reloaded.returncode == 0, reloaded.stderr
    assert summary.exit_code == 0 and summary.failures == 0, explain(summary)
    reconnects = [r for r in summary.rows if r["name"].endswith("reconnect after 1012")]
    assert sum(r["requests"] for r in reconnects) >= 1, summary.rows


def wait_for_open_websockets(stack: Stack, count: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{stack.status_url}/metrics", timeout=5) as response:
            text = response.read().decode()
        open_now = next(
            (float(line.split()[-1]) for line in text.splitlines() if line.startswith("app_websockets_open")),
            0,
        )
        if open_now >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} WebSockets open after {within}s")


def test_web_ui_serves_the_scenario_picker_and_drives_a_run(loadtest_stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "loadtest.runner", "--ui", "--host", loadtest_stack.url),
        *("--web-port", str(port), "--workers", "1", "--out", str(tmp_path / "ui")),
        *("--run-dir", str(loadtest_stack.run_dir)),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=loadtest_stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        page = get_when_up(f"{ui}/", within=30)
        for name in ("HttpApiUser", "EchoSocketUser", "TickerSocketUser", "StreamUser", "StepShape"):
            assert name in page, name
        wait_until(lambda: json.loads(get_when_up(f"{ui}/stats/requests", 5))["worker_count"] == 1, 30)
        form = [("user_count", "2"), ("spawn_rate", "2"), ("user_classes", "HttpApiUser")]
        with urllib.request.urlopen(f"{ui}/swarm", urllib.parse.urlencode(form).encode(), timeout=5) as swarm:
            assert json.loads(swarm.read())["success"] is True
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = json.loads(get_when_up(f"{ui}/stats/requests", within=5))
            if stats["total_rps"] or any(s["num_requests"] for s in stats["stats"]):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the UI's run recorded no requests: {stats}")
        assert_the_stack_tab_serves_the_stacks_side(ui)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)

    assert process.returncode == 0, output
    assert (tmp_path / "ui" / "report.html").is_file(), output
    assert 'class="stack-section"' in (tmp_path / "ui" / "report.html").read_text(), "the charts, at exit too"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{ui}/", timeout=2)


def assert_the_stack_tab_serves_the_stacks_side(ui: str) -> None:
    """The Stack tab: in the page's tabs, its table's rows (one per app worker) in the stats the UI polls,
    its charts' data with Locust's own requests/s beside the stack's, and a view a browser draws."""
    page = get_when_up(f"{ui}/", within=5)
    assert "extended_tabs" in page and '"Stack"' in page and "./stack/tab.js" in page

    def worker_rows() -> list[dict[str, object]]:
        extended = json.loads(get_when_up(f"{ui}/stats/requests", within=5)).get("extended_stats") or []
        return [row for tab in extended if tab["key"] == "stack" for row in tab["data"]]

    wait_until(lambda: any(row.get("rps") for row in worker_rows()), 20)
    assert {"in_flight", "lag_max_ms", "websockets", "rss_mb", "cpu_percent"} <= set(worker_rows()[0])

    def series(name: str) -> list[list[float]]:
        specs = json.loads(get_when_up(f"{ui}/stack/charts", within=5))
        charts = {chart["title"]: chart for chart in specs["charts"]}
        found = charts["Requests/s"]["series"]
        return next((s["points"] for s in found if s["name"] == name), [])

    wait_until(lambda: any(v for _, v in series("nginx")) and bool(series("Locust (client)")), 20)
    dom, console = open_page(f"{ui}/stack/view", budget_ms=4000)
    assert console == [], console
    drawn = re.search(r'id="stack-live" data-drawn="(\d+)"', dom)
    assert drawn is not None and int(drawn.group(1)) >= 5, dom[-2000:]
    dom, _ = open_page(f"{ui}/?tab=stack", budget_ms=6000)
    assert 'id="stack-view"' in dom, "the view sits in the Stack tab"


def wait_until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not true within {within}s"
        time.sleep(0.3)


def get_when_up(url: str, within: float) -> str:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_an_unreachable_host_fails_fast_with_one_line(tmp_path: Path) -> None:
    host = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.runner", "--host", host, "--out", str(tmp_path / "never")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert time.monotonic() - started < 10
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"loadtest: {host} is not reachable (") and "make up" in line, line
    assert not (tmp_path / "never").exists()


CHAT = ROOT / "examples" / "chat"
CHAT_ROWS = [
    ("POST", "/message"),
    ("GET", "/"),
    ("GET", "/slow"),
    ("WS", "/ws connect"),
    ("WS", "/ws round-trip"),
]


@pytest.fixture(scope="module")
def chat_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The chat example served as `make up APP_MODULE=main:app APP_SRC=examples/chat` serves it (its code
    imports on the tooling venv's FastAPI too; its own pinned FastAPI is tests/examples' and the image's)."""
    run_dir = tmp_path_factory.mktemp("chat-stack")
    stack_ = make_stack(run_dir, WEB_CONCURRENCY="1", APP_MODULE="main:app", APP_SRC=str(CHAT))
    with running(stack_):
        yield stack_


def test_the_chat_examples_own_locustfile_runs_against_it_as_scenario(
    chat_stack: Stack, tmp_path: Path
) -> None:
    # SCENARIO=examples/chat/locustfile.py: a user's locustfile, against the user's app, through nginx
    summary = run(chat_stack, str(CHAT / "locustfile.py"), tmp_path / "chat", users=5, run_time="5s")

    assert summary.exit_code == 0, explain(summary)
    assert summary.requests > 0 and summary.failures == 0, explain(summary)
    for expected in CHAT_ROWS:
        row = summary.row(*expected)
        assert row is not None and row["requests"] > 0, f"no {expected} row in {summary.rows}"
    for name in REPORT_FILES:
        assert (summary.report_dir / name).is_file(), name
    assert summary.scenario == "locustfile", "a locustfile's run is named after its file"
    # an app of one's own has no /api/info: the settings come from the run dir's stack.json instead
    settings = json.loads((summary.report_dir / "stack-settings.json").read_text())
    assert settings["settings"]["APP_MODULE"] == "main:app", settings
