"""The servers `make bench` measures, each on free loopback ports, each started and stopped by the bench:
nginx answering `return 200` itself, the bare hello app under gunicorn, and the blueprint stack (through
deploy/stackctl/stack.py, the one way to start it): its app run by our worker, gunicorn's `asgi`, uvicorn's
or granian's own process manager (deploy/stackctl/servers.py), with nginx reaching gunicorn over TCP or a
unix socket, and HAProxy or Caddy in front of the same app instead of nginx (deploy/stackctl/proxies.py)."""

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

from deploy.stackctl import procs, proxies, servers, stack, tools
from deploy.stackctl.config import ROOT, Effective, effective
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import LOOPBACK, free_port, free_port_knobs
from deploy.stackctl.rundir import RunDir
from loadtest.bench.rows import HELLO_PATH, BenchError, Params, Target, Unavailable
from service.settings import ConfigError

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
FRONTS = ("nginx", *proxies.PROXIES)  # what can stand in front of the app (nginx: the stack's own)


class Server(Protocol):
    def url(self, target: Target) -> str: ...

    def roles(self, target: Target) -> dict[str, list[int]]:
        """Every process on the path to the app through `target` now, by role (app, nginx or another
        proxy, log pipes): their CPU is what a request costs."""
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

    def roles(self, target: Target) -> dict[str, list[int]]:
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
    """The blueprint as `make up` runs it (local runtime), on free ports (`knobs` may set GUNICORN_BIND),
    its app run by `server`; HAProxy or Caddy started in front of its app when a row asks for them."""

    def __init__(
        self, knobs: Mapping[str, str], ctx: Context, run_dir: Path, server: str = servers.DEFAULT
    ) -> None:
        missing = servers.get(server).missing()
        if missing:
            raise Unavailable(missing)
        self.run_dir = run_dir
        self.fronts = contextlib.ExitStack()
        self.proxy_urls: dict[str, str] = {}
        try:
            knobs = {**free_port_knobs("local"), **knobs}
            self.handle = stack.start("local", knobs, run_dir, base=ctx.base, server=server)
        except (ConfigError, stack.StackError) as error:
            raise BenchError(f"the blueprint stack did not start: {error}") from None

    def url(self, target: Target) -> str:
        if target == "nginx":
            return self.handle.url
        if target in proxies.PROXIES:
            return self.proxy_url(target)
        return f"http://{self.handle.settings.gunicorn_bind}"

    def proxy_url(self, name: str) -> str:
        """HAProxy or Caddy in front of this stack's app, started the first time a row asks."""
        if name not in self.proxy_urls:
            try:
                running = proxies.running(proxies.PROXIES[name], self.handle, self.run_dir / name)
                self.proxy_urls[name] = self.fronts.enter_context(running)
            except StackError as error:
                if "not installed" in str(error):
                    raise Unavailable(str(error)) from None
                raise BenchError(str(error)) from None
        return self.proxy_urls[name]

    def roles(self, target: Target) -> dict[str, list[int]]:
        """The app's processes (and the stack's Redis), the front's on the way to it (nginx or a proxy) and
        their log pipes."""
        app = self.handle.app_pid()
        runs = {"nginx": self.handle.run_dir, **{name: self.run_dir / name for name in self.proxy_urls}}
        states = {name: RunDir(path).load_state() for name, path in runs.items()}
        stack_state = states["nginx"]
        if app is None or stack_state is None:
            return {}
        roles = {"app": [app, *descendants(app)]}
        if "redis" in stack_state.pids:
            roles["redis"] = [stack_state.pids["redis"]]
        pipes = [
            pid
            for name, each in stack_state.started.items()
            if name != "nginx"
            for pid in (each.log_pid, each.error_log_pid)
            if pid
        ]
        front = states.get(target)
        if front is not None and target in front.started:
            each = front.started[target]
            roles[target] = [each.pid, *descendants(each.pid)]
            pipes += [pid for pid in (each.log_pid, each.error_log_pid) if pid]
        return {**roles, "log pipes": pipes}

    def worker_pids(self) -> list[int]:
        return self.handle.worker_pids()

    def stop(self) -> None:
        try:
            self.fronts.close()
        finally:
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
        stock = servers.STOCK_WORKER_CLASS
        command = [python, "-m", "gunicorn", "-k", stock, "-w", workers, "-b", f"{LOOPBACK}:{port}"]
        command += ["loadtest.bench.hello:app"]
        return Processes(name, "app", command, port, process_env(ctx, run_dir), log)
    knobs = {"WEB_CONCURRENCY": workers}
    if ctx.params.profile:
        knobs["PROFILE"] = ctx.params.profile
    if name == "blueprint-unix":
        return UnixStack(knobs, ctx, run_dir)
    if name == "blueprint-rooms":
        knobs |= rooms_capacity(ctx.params.rooms_n, ctx.workers)
    # uvicorn, granian, gunicorn-asgi: the servers a drill runs (SERVER=...), on the same knobs.
    return Stack(knobs, ctx, run_dir, name if name in servers.SERVERS else servers.DEFAULT)


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
