"""One way to drive a stack: start it with given knobs, get a handle, reload it, stop it; ask the ordering
rules about a set of knobs. `make up`/`reload`/`down`, the timeout lab, the sweep, the Locust runner and the
test fixtures all go through here.

    from deploy.stackctl import stack
    with stack.running("local", {"WEB_CONCURRENCY": "1", **free_port_knobs("local")}, run_dir) as handle:
        httpx2.get(f"{handle.url}/api/ping")
        handle = handle.reload(APP_MAX_DELAY="45")
    stack.findings({"GUNICORN_KEEPALIVE": "5"})  # structured verdicts of the rules; nothing starts

Where knob values come from: `base` (default: this process's environment and the repository's `.env`;
pass a mapping, e.g. `{}`, for defaults + profile only), then `knobs`. A started stack records its
effective values in `<run_dir>/stack.json`, so a later process (a `make reload`, a report) knows what the
stack runs with instead of guessing from its own defaults.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.stackctl import check, docker, rules, runtimes, servers, swarm
from deploy.stackctl.config import (
    KEPT,
    KNOBS,
    ROOT,
    Effective,
    Value,
    effective,
    knob_environment,
    read_env_file,
)
from deploy.stackctl.errors import StackError
from deploy.stackctl.rundir import RunDir, pinned_paths
from deploy.stackctl.runtime import Name
from deploy.stackctl.runtime import Runtime as Backend
from service.settings import ConfigError, Settings, load_settings

__all__ = ["Backend", "ConfigError", "Handle", "StackError", "attach", "findings", "running", "start"]

Runtime = Name  # a runtime's name; its implementation (a runtime.Runtime) is runtimes.RUNTIMES[name]
RUNTIMES: tuple[Runtime, ...] = tuple(runtimes.RUNTIMES)
DEFAULT_RUN_DIR = ROOT / ".run" / "local"
RECORD = "stack.json"
# What the runtime itself decides for each stack; never a sweep axis or a drill input.
OWNED_BY_RUNTIME = (
    *("HTTP_PORT", "HTTPS_PORT", "NGINX_STATUS_PORT", "GUNICORN_BIND"),
    *("NGINX_LISTEN_PORT", "NGINX_HTTPS_LISTEN_PORT", "NGINX_RUN_DIR"),
    *("PROMETHEUS_PORT", "PROMETHEUS_NGINX_EXPORTER_PORT"),
)


resolve_runtime = runtimes.resolve


def backend(runtime: Runtime, server: str = servers.DEFAULT) -> Backend:
    """What a runtime can do (runtime.Runtime): callers ask its methods and capabilities, not its name;
    `server` runs its app (deploy/stackctl/servers.py)."""
    return runtimes.RUNTIMES[runtime].serving(servers.get(server))


def configured_runtime(run_dir: Path = DEFAULT_RUN_DIR, base: Mapping[str, str] | None = None) -> Runtime:
    """The runtime `make up` would use now: RUNTIME from the environment, .env or profile, resolved."""
    environ, env_file = environment(None, base)
    return resolve_runtime(configure(run_dir, environ, env_file).settings.runtime)


def existing_runtime(run_dir: Path = DEFAULT_RUN_DIR) -> Runtime:
    """Which runtime `down`/`ps`/`logs` talk to without reading the config: RUNTIME if set, else the one
    the stack in run_dir was started with (its record, else state a runtime left there), else auto's."""
    dotenv = read_env_file(ROOT / ".env") if (ROOT / ".env").is_file() else {}
    requested = os.environ.get("RUNTIME") or dotenv.get("RUNTIME")
    for name in RUNTIMES:
        if requested == name:
            return name
    previous = recorded(run_dir)
    if previous is not None:
        return previous.runtime
    for name in RUNTIMES:
        if backend(name).left_state(run_dir):
            return name
    return resolve_runtime("auto")


@dataclass(frozen=True)
class Recorded:
    """What `<run_dir>/stack.json` says about the stack started there."""

    runtime: Runtime
    url: str
    values: dict[str, Value]
    server: str = servers.DEFAULT

    def settings(self) -> dict[str, Any]:
        """Every knob as the stack runs it, typed (ports are ints), by env name."""
        loaded = load_settings(**{KNOBS[name]: v.value for name, v in self.values.items() if name in KNOBS})
        return dict(zip(KNOBS, dump_typed(loaded), strict=True))

    def from_environment(self) -> dict[str, str]:
        """The values the stack got from its start environment: what a plain reload must not drop."""
        return {n: v.value for n, v in self.values.items() if v.source in ("environment", KEPT)}


def dump_typed(settings: Settings) -> list[Any]:
    data = settings.model_dump(mode="json")
    return [data[field] for field in KNOBS.values()]


def recorded(run_dir: Path) -> Recorded | None:
    try:
        data = json.loads((run_dir / RECORD).read_text())
        values = {name: Value(value, source) for name, (value, source) in data["values"].items()}
        return Recorded(data["runtime"], data["url"], values, data.get("server", servers.DEFAULT))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record(
    run_dir: Path, runtime: Runtime, url: str, config: Effective, server: str = servers.DEFAULT
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    values = {name: [v.value, v.source] for name, v in config.values.items()}
    data = {"runtime": runtime, "url": url, "server": server, "values": values}
    (run_dir / RECORD).write_text(json.dumps(data, indent=1))


def forget(run_dir: Path) -> None:
    (run_dir / RECORD).unlink(missing_ok=True)


@dataclass(frozen=True)
class Handle:
    """A started stack: where it answers, what it runs with, and how to reload or stop it."""

    runtime: Runtime
    run_dir: Path
    config: Effective
    environ: Mapping[str, str]  # the processes' environment: the CLI run with it sees the same stack
    server: str = servers.DEFAULT  # what runs the app (deploy/stackctl/servers.py)

    @property
    def backend(self) -> Backend:
        return backend(self.runtime, self.server)

    @property
    def settings(self) -> Settings:
        return self.config.settings

    @functools.cached_property
    def url(self) -> str:
        """Where clients reach the stack: its HTTPS URL when NGINX_TLS=1 (the plain port only redirects);
        on a swarm, the address of nginx's edge node (asked once)."""
        return self.backend.url(self.settings, self.knob_environment())

    @functools.cached_property
    def plain_url(self) -> str:
        return self.backend.plain_url(self.settings, self.knob_environment())

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1)

    @property
    def status_url(self) -> str:
        """nginx's status server (stub_status, /metrics): on this host for local stacks only."""
        return self.backend.status_url(self.settings)

    def started_with(self) -> dict[str, Any]:
        return dict(zip(KNOBS, dump_typed(self.settings), strict=True))

    def knob_environment(self) -> dict[str, str]:
        """The processes' environment with every knob's effective value: what compose interpolates."""
        return knob_environment(self.config, self.environ)

    def pids(self) -> dict[str, int]:
        """The main process of each component (components.py) by name; local stacks only."""
        return self.backend.pids(self.run_dir)

    def app_pid(self) -> int | None:
        """The app server's main process (the gunicorn master, uvicorn's supervisor, ...); local only."""
        return self.backend.app_pid(self.run_dir)

    def worker_pids(self) -> list[int]:
        """The app server's processes that serve requests; local stacks only."""
        return self.backend.worker_pids(self.run_dir)

    def logs(self) -> dict[str, Path]:
        """Each component's log file by name; local stacks only."""
        return self.backend.log_files(self.run_dir)

    def log_pids(self) -> list[int]:
        """The processes writing the components' logs; local stacks only."""
        return self.backend.log_pids(self.run_dir)

    def project(self) -> docker.Project:
        return docker.Project(self.knob_environment())

    def containers(self, service: str | None = None) -> list[docker.Container]:
        return self.backend.containers(self.knob_environment(), service)

    def swarm_stack(self) -> swarm.Stack:
        return swarm.Stack(self.knob_environment())

    def scale(self, replicas: int) -> None:
        """Run `replicas` app instances behind nginx (`make scale`; not on the local runtime)."""
        self.backend.scale(self.run_dir, self.config, self.environ, replicas)

    def stop_service(self, service: str) -> None:
        """Stop one service (`redis`, ...) while the rest of the stack runs on: local and docker runtimes."""
        self.backend.stop_service(self.run_dir, self.knob_environment(), service)

    def start_service(self, service: str) -> None:
        """Start again what stop_service stopped, and wait until it is ready."""
        with quietly(True):
            self.backend.start_service(self.run_dir, self.config, self.knob_environment(), service)

    def reload(self, **knobs: str) -> Handle:
        """Apply changed knobs without dropping requests (gunicorn HUP and nginx reload)."""
        environ = {**self.environ, **knobs}
        return self.apply(configure(self.run_dir, environ, env_file=None), environ)

    def apply(self, config: Effective, environ: Mapping[str, str]) -> Handle:
        """Reload the running stack into `config` (refused when it breaks an ordering rule)."""
        check.refuse_unsafe(config, self.runtime, "reload", unsafe_allowed(environ))
        self.backend.reload(self.run_dir, config, environ)
        record(self.run_dir, self.runtime, self.url, config, self.server)
        return Handle(self.runtime, self.run_dir, config, environ, self.server)

    def stop(self) -> None:
        with quietly(True):
            self.backend.down(self.run_dir, self.knob_environment())
        forget(self.run_dir)


def changes(old: Effective, new: Effective) -> list[tuple[str, str, str, str]]:
    """(knob, old value, new value, new source) for every knob whose value differs."""
    return [
        (name, old.values[name].value, value.value, value.source)
        for name, value in new.values.items()
        if name in old.values and old.values[name].value != value.value
    ]


def unsafe_allowed(environ: Mapping[str, str]) -> bool:
    return rules.unsafe_config_allowed(environ)


def environment(
    knobs: Mapping[str, str] | None, base: Mapping[str, str] | None
) -> tuple[dict[str, str], Path | None]:
    """The environment a stack's knobs come from, and the `.env` read under it: `base` alone when given,
    else this process's environment and the repository's `.env` (what `make up` reads)."""
    environ = {**(os.environ if base is None else base), **(knobs or {})}
    return environ, ROOT / ".env" if base is None else None


def isolated_base(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any knob or ALLOW_UNSAFE_CONFIG: a `base` for a stack that
    must run on defaults + its own knobs only, whatever the caller exported."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k not in KNOBS and k != rules.UNSAFE_OVERRIDE}


def configure(
    run_dir: Path, environ: Mapping[str, str] | None = None, env_file: Path | None = ROOT / ".env"
) -> Effective:
    """The effective config for a stack in run_dir: a running one keeps what it was started with."""
    previous = recorded(run_dir)
    kept = previous.from_environment() if previous else None
    return effective(environ, env_file, pinned_paths(RunDir(run_dir)), kept)


def start(
    runtime: Runtime = "local",
    knobs: Mapping[str, str] | None = None,
    run_dir: Path = DEFAULT_RUN_DIR,
    *,
    base: Mapping[str, str] | None = None,
    server: str = servers.DEFAULT,
    enforce_rules: bool = True,
    quiet: bool = True,
) -> Handle:
    """Start a stack and wait until /healthz answers through nginx.

    `server` runs the app (deploy/stackctl/servers.py; the knobs it needs win over `knobs`).
    `enforce_rules=False` starts a config that breaks an ordering rule without a word (the timeout lab
    breaks rules on purpose); otherwise it is refused unless ALLOW_UNSAFE_CONFIG=1 is in the environment.
    Raises ConfigError or StackError, each one line.
    """
    chosen = servers.get(server)
    serving = backend(runtime, server)
    missing = chosen.missing()
    if missing:
        raise StackError(f"SERVER={server}: {missing}")
    environ, env_file = environment({**(knobs or {}), **chosen.knobs}, base)
    config = configure(run_dir, environ, env_file)
    if enforce_rules:
        check.refuse_unsafe(config, runtime, "up", unsafe_allowed(environ))
    with quietly(quiet):
        serving.up(run_dir, config, environ)
    handle = Handle(runtime, run_dir.resolve(), config, environ, server)
    record(handle.run_dir, runtime, handle.url, config, server)
    return handle


@contextlib.contextmanager
def running(
    runtime: Runtime = "local",
    knobs: Mapping[str, str] | None = None,
    run_dir: Path = DEFAULT_RUN_DIR,
    **options: Any,
) -> Iterator[Handle]:
    """A started stack for the block; stopped afterwards, also when the block or the start fails."""
    handle: Handle | None = None
    try:
        handle = start(runtime, knobs, run_dir, **options)
        yield handle
    finally:
        with quietly(True):
            if handle is not None:
                handle.stop()
            else:
                backend(runtime).abandon(run_dir)  # by what its state recorded


@contextlib.contextmanager
def quietly(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # local.up leaves the components running past their Popen objects on purpose (down stops them by
        # pid); Python warns about that when those objects are freed.
        warnings.simplefilter("ignore", ResourceWarning)
        yield


def attach(run_dir: Path = DEFAULT_RUN_DIR) -> Handle | None:
    """The stack a previous `start` (or `make up`) left running in run_dir, if any."""
    previous = recorded(run_dir)
    if previous is None:
        return None
    environ = {**os.environ, **{name: v.value for name, v in previous.values.items()}}
    config = effective(environ, None)
    return Handle(previous.runtime, run_dir.resolve(), config, environ, previous.server)


def findings(
    knobs: Mapping[str, str] | None = None,
    runtime: Runtime = "local",
    base: Mapping[str, str] | None = None,
) -> list[rules.Finding]:
    """Every verdict of the ordering rules (and advice) for these knobs over `base`; nothing starts."""
    config = effective(*environment(knobs, base))
    return rules.evaluate(config.settings, backend(runtime).host_facts(config.settings))


def locust_web_ui(run_dir: Path, runtime: Runtime, workers: int, web_port: int) -> None:
    """Locust's web UI run by the stack itself (Runtime.serves_locust_ui), in the foreground until Ctrl-C,
    against the knobs of the stack in run_dir (else the configured ones)."""
    handle = attach(run_dir)
    config = handle.config if handle else configure(run_dir)
    backend(runtime).locust_ui(config, handle.environ if handle else os.environ, workers, web_port)


def locust_target(run_dir: Path) -> str:
    """Where the compose Locust containers send their load (docker.locust_target) for the stack in
    run_dir (else the configured one)."""
    handle = attach(run_dir)
    return docker.locust_target((handle.config if handle else configure(run_dir)).settings)
