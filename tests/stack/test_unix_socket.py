"""GUNICORN_BIND=unix:/path on the local runtime: real nginx -> unix socket -> gunicorn, through nginx for
HTTP and WebSockets, across a reload; refused in one line where gunicorn would take over a socket in use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest
import websocket

from deploy.stackctl import local, procs, stack
from deploy.stackctl.config import ROOT
from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    """A short path every user may enter: nginx started by root serves with `nobody` workers, and pytest's
    own tmp dirs are 0700 (and long: sun_path takes 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="unix-bind-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def unix_stack(socket_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack_ = make_stack(
        tmp_path_factory.mktemp("unix-stack"),
        WEB_CONCURRENCY="1",
        GUNICORN_BIND=f"unix:{socket_dir / 'gunicorn.sock'}",
        GUNICORN_FORWARDED_ALLOW_IPS="*",
    )
    with running(stack_):
        yield stack_


def test_nginx_proxies_http_to_gunicorns_unix_socket(unix_stack: Stack, socket_dir: Path) -> None:
    socket_path = socket_dir / "gunicorn.sock"
    assert socket_path.is_socket()
    conf = (unix_stack.run_dir / "nginx.conf").read_text()
    assert f"server unix:{socket_path};" in conf
    assert httpx2.get(f"{unix_stack.url}/api/ping").status_code == 200
    echoed = httpx2.post(f"{unix_stack.url}/api/echo", json={"text": "over a socket file"})
    assert echoed.status_code == 200 and echoed.json()["text"] == "over a socket file"
    # uvicorn has no peer address on a unix socket; with '*' it believes nginx's X-Forwarded-For.
    info = httpx2.get(f"{unix_stack.url}/api/info").json()
    assert info["client"] == "127.0.0.1" == info["x_forwarded_for"]
    # nginx's status port reaches the app's /metrics over the socket too.
    assert "app_requests_in_flight" in httpx2.get(f"{unix_stack.status_url}/metrics").text


def test_gunicorn_listens_on_no_tcp_port(unix_stack: Stack) -> None:
    state = local.RunDir(unix_stack.run_dir).load_state()
    assert state is not None
    master = state.pids["gunicorn"]
    for pid in [master, *procs.descendants(master)]:
        listening = [c for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert listening == [], f"gunicorn process {pid} listens on {listening}"


def test_a_websocket_echoes_through_nginx_and_is_closed_with_1012_on_reload(unix_stack: Stack) -> None:
    ws = websocket.create_connection(f"{unix_stack.ws_url}/ws/echo", timeout=10)
    try:
        ws.send("hello over unix")
        assert ws.recv() == "hello over unix"
        assert unix_stack.handle is not None
        unix_stack.handle = unix_stack.handle.reload(APP_MAX_DELAY="45")
        frame = ws.recv_frame()
    finally:
        ws.shutdown()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(frame.data[:2], "big") == 1012
    again = websocket.create_connection(f"{unix_stack.ws_url}/ws/echo", timeout=10)
    try:
        again.send("after the reload")
        assert again.recv() == "after the reload"
    finally:
        again.close()
    assert httpx2.get(f"{unix_stack.url}/api/info").json()["settings"]["app_max_delay"] == 45


def test_the_container_healthcheck_reads_readiness_over_the_socket(unix_stack: Stack) -> None:
    checked = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
        env={**os.environ, "GUNICORN_BIND": unix_stack.env["GUNICORN_BIND"]},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert checked.returncode == 0, checked.stderr


def test_a_socket_in_use_is_refused_in_one_line_and_nothing_starts(unix_stack: Stack, tmp_path: Path) -> None:
    bind = unix_stack.env["GUNICORN_BIND"]
    second = make_stack(tmp_path / "second", GUNICORN_BIND=bind)
    with pytest.raises(stack.StackError) as refused:
        second.up()
    assert str(refused.value) == f"GUNICORN_BIND={bind}: a process already accepts connections on it; " + (
        "choose another path"
    )
    assert local.RunDir(second.run_dir).load_state() is None
    assert httpx2.get(f"{unix_stack.url}/api/ping").status_code == 200, "the first stack kept its socket"


def test_make_check_names_the_socket_as_nginxs_upstream(unix_stack: Stack) -> None:
    checked = unix_stack.stackctl("check", NGINX_UPSTREAM="127.0.0.1:9")
    assert checked.returncode == 0, checked.stdout[-1500:]
    assert f"nginx -> {unix_stack.env['GUNICORN_BIND']}" in checked.stdout
    assert "no effect: NGINX_UPSTREAM=127.0.0.1:9 set while GUNICORN_BIND=unix:" in checked.stdout


def test_down_removes_the_socket(socket_dir: Path, tmp_path: Path) -> None:
    socket_path = socket_dir / "down.sock"
    with running(make_stack(tmp_path / "run", WEB_CONCURRENCY="1", GUNICORN_BIND=f"unix:{socket_path}")):
        assert socket_path.is_socket()
    assert not socket_path.exists()


@pytest.mark.parametrize(
    ("prepare", "refusal"),
    [
        ("missing directory", "directory {parent} does not exist; create it or choose another"),
        ("a plain file", "{path} exists and is not a socket; choose another path"),
    ],
)
def test_a_path_gunicorn_cannot_bind_is_refused_before_anything_starts(
    prepare: str, refusal: str, socket_dir: Path
) -> None:
    path = socket_dir / "nowhere" / "app.sock" if prepare == "missing directory" else socket_dir / "file.sock"
    if prepare == "a plain file":
        path.write_text("not a socket")
    with pytest.raises(local.StackError) as refused:
        local.check_unix_bind(path)
    assert str(refused.value) == f"GUNICORN_BIND=unix:{path}: " + refusal.format(
        parent=path.parent, path=path
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only nginx started by root hands its workers to nobody")
def test_as_root_a_directory_nobody_may_enter_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(local.StackError, match=r"nginx's workers run as nobody .* may not enter"):
        local.check_unix_bind(private / "app.sock")
