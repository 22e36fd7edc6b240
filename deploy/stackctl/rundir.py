"""A stack's run directory (`.run/local` for `make up`): rendered configs, and for the local runtime its
`state.json`, pid files and logs. Every runtime has one: nginx's writable directory is pinned inside it,
docker's TLS overlay and swarm's stack file are written there."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy.stackctl import tls
from deploy.stackctl.ports import LOOPBACK

Address = tuple[str, str, int]  # (knob, host, port): where a component listens, and the knob that says so


@dataclass
class Started:
    """One component the local runtime started: its process, its log pipe and how to stop it."""

    pid: int
    log_pid: int
    stop_signal: str  # a signal's name, e.g. SIGQUIT
    grace: float  # seconds it may take to exit before SIGKILL
    error_log_pid: int = 0  # the log pipe of its stderr, when it has an error log of its own


@dataclass
class State:
    """What `up` started (`state.json`), so that `down` stops exactly that and nothing else."""

    started: dict[str, Started]  # by component name, in start order
    ports: list[Address]  # every component's listening address: free again once `down` is done
    http_port: int
    gunicorn_bind: str
    status_port: int
    https_port: int = 0  # 0: no TLS
    listen_address: str = LOOPBACK
    liveness_path: str = "/healthz"  # APP_LIVENESS_PATH
    metrics_path: str = "/metrics"  # APP_METRICS_PATH
    app_python: str = ""  # the python gunicorn runs with (appenv.py); a reload cannot change it

    @property
    def pids(self) -> dict[str, int]:
        return {name: each.pid for name, each in self.started.items()}

    @property
    def log_pids(self) -> list[int]:
        return [pid for each in self.started.values() for pid in (each.log_pid, each.error_log_pid) if pid]

    @property
    def host(self) -> str:
        """Where a client of this host reaches nginx's public ports."""
        return tls.client_host(self.listen_address)

    @property
    def plain_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.https_port}" if self.https_port else self.plain_url

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        started = {name: Started(**each) for name, each in data.pop("started").items()}
        ports = [(str(knob), str(host), int(port)) for knob, host, port in data.pop("ports")]
        return cls(started, ports, **data)


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()

    def __getattr__(self, name: str) -> Path:
        files = {
            "state": "state.json",
            "env_file": "stack.env",
            "nginx_conf": "nginx.conf",
            "nginx_dir": "nginx",
            "metrics_dir": "metrics",
            "prometheus_dir": "prometheus",  # its rendered config, and its storage in data/
        }
        if name not in files:
            raise AttributeError(name)
        return self.path / files[name]

    def log(self, component: str) -> Path:
        """Where a component's output goes (rotated into <name>.log.1, ...)."""
        return self.path / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.path / f"{component}.pid"

    def load_state(self) -> State | None:
        try:
            return State.from_json(json.loads(self.state.read_text()))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def save_state(self, state: State) -> None:
        self.state.write_text(state.to_json())


def pinned_paths(run: RunDir) -> dict[str, str]:
    """Values the runtime owns: nginx's writable directory must be this stack's own."""
    return {"NGINX_RUN_DIR": str(run.nginx_dir.resolve())}
