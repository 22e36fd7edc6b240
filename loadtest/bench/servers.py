"""The servers `make bench` measures, each on free loopback ports, each started and stopped by the bench:
nginx answering `return 200` itself, the bare hello app under gunicorn, the blueprint stack (through
deploy/stackctl/stack.py, the one way to start it; with its own worker class or gunicorn's `asgi`, or with
nginx reaching gunicorn over a unix socket), and the blueprint app under uvicorn's and granian's own process
managers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx2
import psutil

from deploy.stackctl import procs, stack, tools
from deploy.stackctl.components import APP, NGINX
from deploy.stackctl.config import ROOT, Effective, effective
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import LOOPBACK, free_port, free_port_knobs
from loadtest.bench.rows import HELLO_PATH, BenchError, Params, Target, Unavailable
from service.platform import PLATFORM_APP
from service.settings import ConfigError

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
OUR_WORKER = "uvicorn_worker.UvicornWorker"


class Server(Protocol):
    def url(self, target: Target) -> str: ...

    def roles(self) -> dict[str, list[int]]:
        """Every process of the server now, by role (app, nginx, log pipes): their CPU is what a request
        costs."""
        ...

    def worker_pids(self) -> list[int]:
        """The processes that run the app (their memory is what a WebSocket costs)."""
        ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Context:
    params: Params
    workers: int
    config: Effective  # the blueprint's knobs for this run (profile, .env, environment)
    base: Mapping[str, str] | None
    out_dir: Path


def blueprint_config(params: Params, base: Mapping[str, str] | None) -> Effective:
    knobs = {"PROFILE": params.profile} if params.profile else {}
    if params.workers:
        knobs["WEB_CONCURRENCY"] = str(params.workers)
    try:
        return effective(*stack.environment(knobs, base))
    except ConfigError as error:
        raise BenchError(str(error)) from None


def gunicorn_asgi_missing() -> str:
    """Why gunicorn's own ASGI worker cannot run here ('' when it can)."""
    import gunicorn
    import gunicorn.workers

    if "asgi" in gunicorn.workers.SUPPORTED_WORKERS:
        return ""
    return f"gunicorn {gunicorn.__version__} has no `-k asgi` worker (it came in 24)"


def descendants(pid: int) -> list[int]:
    return procs.descendants(pid)


class Processes:
    """One command in its own session, answering on a loopback port; stopped by its pid."""

    def __init__(
        self,
        name: str,
        role: str,
        command: list[str],
        port: int,
        env: Mapping[str, str],
        log: Path,
        ready_path: str = HELLO_PATH,
    ) -> None:
        self.name, self.role, self.ready_path = name, role, ready_path
        self.base_url = f"http://{LOOPBACK}:{port}"
        self.log = log
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=dict(env),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
                raise BenchError(f"{self.name} exited with {self.process.returncode} while starting: {tail}")
            try:
                if httpx2.get(f"{self.base_url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise BenchError(
            f"{self.name} did not answer {self.ready_path} with 200 within {START_TIMEOUT_S:g} s; "
            f"see {self.log}"
        )

    def url(self, target: Target) -> str:
        return self.base_url

    def roles(self) -> dict[str, list[int]]:
        return {self.role: [self.process.pid, *descendants(self.process.pid)]}

    def worker_pids(self) -> list[int]:
        return descendants(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        children = descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in children:
            procs.stop(pid, signal.SIGTERM, 5)


class Stack:
    """The blueprint as `make up` runs it (local runtime), on free ports (`knobs` may set GUNICORN_BIND)."""

    def __init__(self, knobs: Mapping[str, str], ctx: Context, run_dir: Path) -> None:
        try:
            self.handle = stack.start("local", {**free_port_knobs("local"), **knobs}, run_dir, base=ctx.base)
        except (ConfigError, stack.StackError) as error:
            raise BenchError(f"the blueprint stack did not start: {error}") from None

    def url(self, target: Target) -> str:
        return self.handle.url if target == "nginx" else f"http://{self.handle.settings.gunicorn_bind}"

    def roles(self) -> dict[str, list[int]]:
        pids = self.handle.pids()
        if not pids:
            return {}
        app, nginx = pids[APP.name], pids[NGINX.name]
        return {
            "app": [app, *descendants(app)],
            "nginx": [nginx, *descendants(nginx)],
            **({"redis": [pids["redis"]]} if "redis" in pids else {}),
            "log pipes": self.handle.log_pids(),
        }

    def worker_pids(self) -> list[int]:
        return self.handle.worker_pids()

    def stop(self) -> None:
        self.handle.stop()


class UnixStack(Stack):
    """The blueprint with nginx -> gunicorn over a unix socket, in a short directory of its own (a report
    path can be longer than the 107 bytes a socket path may have) that `nobody` may enter: nginx started by
    root serves with `nobody` workers."""

    def __init__(self, knobs: Mapping[str, str], ctx: Context, run_dir: Path) -> None:
        self.socket_dir = Path(tempfile.mkdtemp(prefix="bench-unix-"))
        self.socket_dir.chmod(0o755)
        # uvicorn sees no peer address on a socket: '*' makes it read X-Forwarded-For as it does over TCP.
        unix = {
            "GUNICORN_BIND": f"unix:{self.socket_dir / 'gunicorn.sock'}",
            "GUNICORN_FORWARDED_ALLOW_IPS": "*",
        }
        try:
            super().__init__({**knobs, **unix}, ctx, run_dir)
        except BenchError:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


NGINX_RETURN = """worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        location / {{ return 200 '{{"pong":true}}'; }}
    }}
}}
"""


def process_env(ctx: Context, run_dir: Path) -> dict[str, str]:
    """The app's environment outside the stack: the same knobs (STACK_ENV_FILE) and its own metrics dir."""
    (run_dir / "metrics").mkdir(parents=True, exist_ok=True)
    (run_dir / "stack.env").write_text(ctx.config.env_file_text())
    return {
        **(os.environ if ctx.base is None else ctx.base),
        "STACK_ENV_FILE": str(run_dir / "stack.env"),
        "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "metrics"),
        "PYTHONUNBUFFERED": "1",
    }


def start(name: str, ctx: Context) -> Server:
    run_dir = ctx.out_dir / "servers" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    port, workers, python = free_port(), str(ctx.workers), sys.executable
    log = run_dir / "server.log"
    if name == "nginx-return":
        conf = run_dir / "nginx.conf"
        conf.write_text(NGINX_RETURN.format(workers=workers, dir=run_dir, host=LOOPBACK, port=port))
        try:
            nginx = tools.find_nginx()
        except StackError as error:
            raise BenchError(str(error)) from None
        command = [nginx, "-c", str(conf), "-e", str(run_dir / "error.log"), "-g", "daemon off;"]
        return Processes(name, "nginx", command, port, os.environ, log)
    if name == "bare":
        command = [python, "-m", "gunicorn", "-k", OUR_WORKER, "-w", workers, "-b", f"{LOOPBACK}:{port}"]
        command += ["loadtest.bench.hello:app"]
        return Processes(name, "app", command, port, process_env(ctx, run_dir), log)
    if name == "uvicorn":
        command = [python, "-m", "uvicorn", PLATFORM_APP, "--workers", workers, "--no-access-log"]
        command += ["--host", LOOPBACK, "--port", str(port)]
        return Processes(name, "app", command, port, process_env(ctx, run_dir), log, ctx.params.path)
    if name == "granian":
        command = [python, "-m", "granian", "--interface", "asgi", "--workers", workers]
        command += ["--host", LOOPBACK, "--port", str(port), PLATFORM_APP]
        return Processes(name, "app", command, port, process_env(ctx, run_dir), log, ctx.params.path)
    knobs = {"WEB_CONCURRENCY": workers}
    if ctx.params.profile:
        knobs["PROFILE"] = ctx.params.profile
    if name == "gunicorn-asgi":
        missing = gunicorn_asgi_missing()
        if missing:
            raise Unavailable(missing)
        knobs["GUNICORN_WORKER_CLASS"] = "asgi"
    if name == "blueprint-unix":
        return UnixStack(knobs, ctx, run_dir)
    if name == "blueprint-rooms":
        knobs |= rooms_capacity(ctx.params.rooms_n, ctx.workers)
    return Stack(knobs, ctx, run_dir)


def rooms_capacity(members: int, workers: int) -> dict[str, str]:
    """Room for `members` WebSockets however the kernel spreads them over the workers, sized so that the
    ordering rules hold (6: nginx's connections, 7: uvicorn's headroom): one nginx worker per app worker."""
    limit = members + 500
    return {
        "UVICORN_LIMIT_CONCURRENCY": str(limit),
        "APP_EXPECTED_WEBSOCKETS": str(members),
        "NGINX_WORKER_PROCESSES": str(workers),
        "NGINX_WORKER_CONNECTIONS": str(2 * limit),
        "NGINX_WORKER_RLIMIT_NOFILE": str(2 * limit + 1000),
    }


def worker_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total
