"""make up / reload / down of the local runtime, each on its own stack."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import time
from pathlib import Path

import httpx2
import psutil
import pytest
import websocket

from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack


def processes_of(run_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(run_dir) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_up_twice_reload_under_load_then_down_leaves_nothing(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "run", WEB_CONCURRENCY="2")
    stack.up()
    try:
        again = stack.stackctl("up")
        assert again.returncode == 0
        assert "already running" in again.stdout
        servers = [p for p in processes_of(stack.run_dir) if "logpipe" not in " ".join(p.cmdline())]
        assert len([p for p in servers if "gunicorn" in " ".join(p.cmdline())]) == 3

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            in_flight = [
                pool.submit(httpx2.get, f"{stack.url}/api/slow", params={"delay": 2}, timeout=60)
                for _ in range(20)
            ]
            reloaded = stack.stackctl("reload", APP_MAX_DELAY="45")
            statuses = [f.result().status_code for f in in_flight]
        assert reloaded.returncode == 0, reloaded.stderr
        assert statuses == [200] * 20
        assert httpx2.get(f"{stack.url}/api/info").json()["settings"]["app_max_delay"] == 45
    finally:
        down = stack.stackctl("down")
    assert down.returncode == 0
    assert processes_of(stack.run_dir) == []
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{stack.url}/healthz")


def test_port_taken_is_one_clear_line(tmp_path: Path) -> None:
    first = make_stack(tmp_path / "first")
    first.up()
    try:
        second = make_stack(tmp_path / "second", HTTP_PORT=first.env["HTTP_PORT"])
        result = second.stackctl("up")
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0
        assert "HTTP_PORT" in result.stderr and first.env["HTTP_PORT"] in result.stderr
        assert processes_of(second.run_dir) == []
    finally:
        first.down()


def test_bad_knob_is_refused_before_anything_starts(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "bad", GUNICORN_KEEPALIVE="-3")
    result = stack.stackctl("up")
    assert result.returncode == 1
    assert "GUNICORN_KEEPALIVE=-3" in result.stderr.replace("'", "")
    assert processes_of(stack.run_dir) == []


def test_logs_rotate_at_their_bound_and_keep_one_json_line_per_request(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "run", LOG_MAX_MB="1", LOG_FILES="2")
    stack.up()
    try:
        # ~3.5 MB of nginx access lines: past the bound three times over.
        with httpx2.Client(base_url=stack.url) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.get(f"/api/ping?pad={'x' * 300}"), range(8000)))
        trace = httpx2.get(f"{stack.url}/api/ping", headers={"X-Request-ID": "bounded-42"})
        assert trace.status_code == 200
    finally:
        stack.down()
    logs = sorted(p.name for p in stack.run_dir.glob("nginx.log*"))
    assert logs == ["nginx.log", "nginx.log.1"], "LOG_FILES=2: the live file and one rotated file"
    assert all(p.stat().st_size <= (1 << 20) + 4096 for p in stack.run_dir.glob("nginx.log*"))
    lines = [json.loads(line) for line in (stack.run_dir / "nginx.log").read_text().splitlines()]
    [traced] = [line for line in lines if line.get("request_id") == "bounded-42"]
    assert traced["status"] == 200 and traced["upstream_response_time"]
    app_lines = (stack.run_dir / "gunicorn.log").read_text()
    assert "bounded-42" not in app_lines, "one access line per request: nginx's, not the app's as well"


def nginx_workers(stack: Stack) -> set[int]:
    assert stack.handle is not None
    return {child.pid for child in psutil.Process(stack.handle.pids()["nginx"]).children()}


def test_reload_leaves_nginx_alone_unless_its_config_changed(tmp_path: Path) -> None:
    with running(make_stack(tmp_path / "run", WEB_CONCURRENCY="1")) as stack:
        before = nginx_workers(stack)
        app_only = stack.stackctl("reload", APP_MAX_DELAY="45")
        assert app_only.returncode == 0, app_only.stderr
        assert "nginx unchanged (not reloaded)" in app_only.stdout
        assert nginx_workers(stack) == before, "an app-only reload must not cycle nginx's workers"

        both = stack.stackctl("reload", APP_MAX_DELAY="45", NGINX_PROXY_READ_TIMEOUT="29")
        assert both.returncode == 0, both.stderr
        deadline = time.monotonic() + 10
        while nginx_workers(stack) & before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not nginx_workers(stack) & before, "a changed nginx knob reloads nginx"


def test_down_with_websockets_open_closes_them_with_1012_without_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    stack = make_stack(tmp_path / "run", WEB_CONCURRENCY="1", GUNICORN_GRACEFUL_TIMEOUT="25")
    stack.up()
    sockets = [websocket.create_connection(f"{stack.ws_url}/ws/echo", timeout=30) for _ in range(3)]
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stopping = pool.submit(stack.down)
            codes = []
            for ws in sockets:
                with contextlib.suppress(websocket.WebSocketException, OSError):
                    frame = ws.recv_frame()
                    codes.append(int.from_bytes(frame.data[:2], "big"))
            stopping.result()
    finally:
        for ws in sockets:
            ws.shutdown()
    assert codes == [1012] * 3, "the app closes its WebSockets (service restart), not nginx"
    assert time.monotonic() - started < 25, "down waited out nginx's grace for tunnels only the app ends"
