"""Front proxies beside nginx, for comparison (`make bench` rows blueprint-haproxy and blueprint-caddy):
HAProxy and Caddy from the OS packages, found (and installed when we are root) like nginx, each a component
the local runtime starts, logs and stops like nginx, in a run dir of its own, in front of a running stack's
app. Their configs (deploy/proxies/) are rendered from the same NGINX_* knobs and do what nginx's does on
the hot path: keep-alive to the app, one JSON access line per request, the request id, the security
headers, X-Forwarded-For set to the peer.

    with proxies.running(proxies.HAPROXY, handle, run_dir) as url:
        httpx2.get(f"{url}/api/ping")
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

from deploy.stackctl import local, stack
from deploy.stackctl.components import Component, Launch, answers_200
from deploy.stackctl.config import ROOT, Effective
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import LOOPBACK, free_port
from deploy.stackctl.rundir import RunDir
from deploy.stackctl.tools import find_caddy, find_haproxy
from service.settings import Settings, unix_socket_path, usable_cpus

TEMPLATES = ROOT / "deploy" / "proxies"


@dataclass(frozen=True)
class Proxy:
    name: str
    config_file: str  # rendered into the run dir from deploy/proxies/<config_file>.template
    find: Callable[[], str]
    run: Callable[[str, Path], list[str]]  # (its binary, its config) -> the command
    validate: Callable[[str, Path], list[str]]
    upstream: Callable[[str], str]  # GUNICORN_BIND as this proxy names a server
    stop_signal: signal.Signals  # graceful: stop accepting, finish open requests

    def render(self, settings: Settings, port: int) -> str:
        template = Template((TEMPLATES / f"{self.config_file}.template").read_text())
        return template.safe_substitute(values(settings, port, self.upstream(settings.gunicorn_bind)))

    def component(self, port: int) -> Component:
        """This proxy on LOOPBACK:port, in front of the app at GUNICORN_BIND."""

        def prepare(run: RunDir, config: Effective) -> None:
            (run.path / self.config_file).write_text(self.render(config.settings, port))

        def check(run: RunDir) -> None:
            test = subprocess.run(
                self.validate(self.find(), run.path / self.config_file), capture_output=True, text=True
            )
            if test.returncode != 0:
                lines = (test.stdout + test.stderr).strip().splitlines() or ["(no output)"]
                raise StackError(f"{self.name} rejected {run.path / self.config_file}: {lines[-1]}")

        return Component(
            name=self.name,
            service=self.name,
            command=lambda launch: self.run(self.find(), launch.run.path / self.config_file),
            cwd=lambda launch: launch.run.path,
            env=environment,
            prepare=prepare,
            check=check,
            listens=lambda settings: [(f"{self.name.upper()}_PORT", LOOPBACK, port)],
            ready=answers_200(lambda launch: f"http://{LOOPBACK}:{port}/healthz", f"through {self.name}"),
            stop_signal=self.stop_signal,
            grace=lambda settings: settings.gunicorn_graceful_timeout + 5,
        )


def values(settings: Settings, port: int, upstream: str) -> dict[str, str | int]:
    """The template's values, from the knobs nginx's config reads for the same thing."""
    threads = settings.nginx_worker_processes
    return {
        "LISTEN": f"{LOOPBACK}:{port}",
        "UPSTREAM": upstream,
        "THREADS": usable_cpus() if threads == "auto" else threads,
        "MAXCONN": settings.nginx_worker_connections,
        "CONNECT_TIMEOUT": settings.nginx_proxy_connect_timeout,
        "HEADER_TIMEOUT": settings.nginx_client_header_timeout,
        "CLIENT_TIMEOUT": settings.nginx_keepalive_timeout,
        "KEEPALIVE_TIMEOUT": settings.nginx_keepalive_timeout,
        "READ_TIMEOUT": settings.nginx_proxy_read_timeout,
        "WS_READ_TIMEOUT": settings.nginx_ws_read_timeout,
        "KEEPALIVE_POOL_TIMEOUT": settings.nginx_upstream_keepalive_timeout,
        "KEEPALIVE_CONNECTIONS": settings.nginx_upstream_keepalive,
        "KEEPALIVE_REQUESTS": settings.nginx_upstream_keepalive_requests,
    }


def environment(launch: Launch) -> Mapping[str, str]:
    """Caddy keeps state under $XDG_DATA_HOME and $XDG_CONFIG_HOME: the run dir, not the user's home."""
    base = os.environ if launch.environ is None else launch.environ
    return {**base, "XDG_DATA_HOME": str(launch.run.path), "XDG_CONFIG_HOME": str(launch.run.path)}


def haproxy_upstream(bind: str) -> str:
    path = unix_socket_path(bind)
    return f"unix@{path}" if path else bind


def caddy_upstream(bind: str) -> str:
    path = unix_socket_path(bind)
    return f"unix/{path}" if path else bind


HAPROXY = Proxy(
    "haproxy",
    "haproxy.cfg",
    find_haproxy,
    run=lambda binary, config: [binary, "-db", "-f", str(config)],  # -db: in the foreground
    validate=lambda binary, config: [binary, "-c", "-q", "-f", str(config)],
    upstream=haproxy_upstream,
    stop_signal=signal.SIGUSR1,  # soft stop
)
CADDY = Proxy(
    "caddy",
    "Caddyfile",
    find_caddy,
    run=lambda binary, config: [binary, "run", "--config", str(config), "--adapter", "caddyfile"],
    validate=lambda binary, config: [binary, "validate", "--config", str(config), "--adapter", "caddyfile"],
    upstream=caddy_upstream,
    stop_signal=signal.SIGTERM,  # graceful
)
PROXIES = {proxy.name: proxy for proxy in (HAPROXY, CADDY)}


@contextlib.contextmanager
def running(proxy: Proxy, handle: stack.Handle, run_dir: Path) -> Iterator[str]:
    """`proxy` on a free port in front of `handle`'s app, for the block; yields its URL. Raises StackError
    when the proxy is not installed (and cannot be) or does not start."""
    proxy.find()
    port = free_port()
    run = RunDir(run_dir)
    components = (proxy.component(port),)
    try:
        with stack.quietly(True):
            local.up(run, handle.config, handle.environ, components)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        local.down(run, quiet=True, components=components)
