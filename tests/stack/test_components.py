"""deploy/stackctl/components.py: a part added to the stack as one entry is started, listed, logged and
stopped by the local runtime like gunicorn and nginx, and its port is refused at `up` when taken."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx2
import psutil
import pytest

from deploy.stackctl import stack
from deploy.stackctl.components import COMPONENTS, Component, answers_200
from deploy.stackctl.errors import StackError
from deploy.stackctl.local import Local
from deploy.stackctl.ports import LOOPBACK, free_port, port_in_use
from tests.support.stack import make_stack

pytestmark = pytest.mark.stack


def file_server(port: int) -> Component:
    """A tiny HTTP server of the run dir: what a cache or a metrics server will be, as one entry."""
    return Component(
        name="files",
        service="files",
        command=lambda launch: [
            *(sys.executable, "-m", "http.server", "--bind", LOOPBACK, str(port)),
            *("--directory", str(launch.run.path)),
        ],
        listens=lambda settings: [("FILES_PORT", LOOPBACK, port)],
        port_knobs=("FILES_PORT",),
        ready=answers_200(lambda launch: f"http://{LOOPBACK}:{port}/stack.env"),
        grace=lambda settings: 5.0,
    )


def processes_of(run_dir: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]


def test_an_added_component_is_started_listed_logged_and_stopped(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    runtime = Local((*COMPONENTS, file_server(port)))
    assert "FILES_PORT" in runtime.port_knobs()
    env = make_stack(tmp_path, WEB_CONCURRENCY="1").env
    run_dir = tmp_path / "run"
    with stack.quietly(True):  # also the warning that the started processes outlive their Popen objects
        runtime.up(run_dir, stack.configure(run_dir, env, env_file=None), env)
    pids = runtime.pids(run_dir)
    try:
        assert list(pids) == ["redis", "gunicorn", "nginx", "files"], "started in the order of the entries"
        assert httpx2.get(f"http://{LOOPBACK}:{port}/stack.env").status_code == 200
        capfd.readouterr()

        runtime.ps(run_dir, env)
        listed = capfd.readouterr().out
        assert f"{pids['files']:>7}  files " in listed
        assert f"{pids['gunicorn']:>7}  gunicorn master " in listed
        assert f"{pids['redis']:>7}  redis-server " in listed, "the rooms' backplane is a component too"

        runtime.logs(run_dir, env, follow=False)
        shown = capfd.readouterr().out
        assert f"==> {run_dir / 'files.log'} <==" in shown
        assert f"==> {run_dir / 'redis.log'} <==" in shown and "Ready to accept connections" in shown
        assert '"GET /stack.env HTTP/1.1" 200' in shown, "the readiness probe's request, in its log"
    finally:
        runtime.down(run_dir, env)
    assert "stopped the stack" in capfd.readouterr().out
    assert processes_of(run_dir) == [], "down stops every component and its log pipe"
    assert not port_in_use(LOOPBACK, port)


def test_an_added_components_port_is_refused_when_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        runtime = Local((*COMPONENTS, file_server(port)))
        env = make_stack(tmp_path).env
        run_dir = tmp_path / "run"
        config = stack.configure(run_dir, env, env_file=None)
        with pytest.raises(StackError, match=rf"FILES_PORT: port {port} is already in use"):
            runtime.up(run_dir, config, env)
    assert processes_of(run_dir) == []


def test_with_redis_url_the_stack_starts_no_redis_and_the_rooms_use_that_one(tmp_path: Path) -> None:
    """Nothing answers on port 1: the rooms' publish is refused with the JSON 503, HTTP serves on."""
    env = make_stack(tmp_path, WEB_CONCURRENCY="1", REDIS_URL="redis://127.0.0.1:1/0").env
    with stack.running("local", run_dir=tmp_path / "run", base=env) as handle:
        assert list(handle.pids()) == ["gunicorn", "nginx"]
        published = httpx2.post(f"{handle.url}/api/rooms/lobby/messages", json={"data": 1}, timeout=10)
        ping = httpx2.get(f"{handle.url}/api/ping", timeout=10)
    assert (published.status_code, published.json()["error"]) == (503, "backplane_unavailable")
    assert "127.0.0.1:1" in published.json()["detail"] or "Connection" in published.json()["detail"]
    assert ping.status_code == 200
