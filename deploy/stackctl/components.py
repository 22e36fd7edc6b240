"""What a stack runs, declared once: for each component its process on this host (command, environment,
the files it needs rendered, readiness probe, stop signal and grace), its log file and its service in
docker-compose.yml. The local runtime starts COMPONENTS in order, lists them, shows their logs and stops
them in reverse order; docker.py and swarm.py name the same services.

Adding a part to the stack (a cache, a metrics server) is one entry in COMPONENTS plus its service in
docker-compose.yml: `make up` then starts it, `make ps`/`make logs` show it, `make down` stops it. A part
the stack runs only when a knob says so (`wanted`: Prometheus and nginx's exporter with MONITORING=1) is
there in compose behind a profile of that name (Redis, wanted by the demo app without REDIS_URL, is scaled
to none instead).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2

from deploy.stackctl import appenv, monitoring, preflight, tls
from deploy.stackctl.config import ROOT, Effective, nginx_temp_dirs, render_nginx
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import LOOPBACK, bind_in_use, split_bind
from deploy.stackctl.rundir import Address, RunDir, State
from deploy.stackctl.tools import (
    find_nginx,
    find_nginx_exporter,
    find_prometheus,
    find_promtool,
    find_redis_server,
)
from service.settings import DEMO_APP, Settings, unix_socket_path

GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"


@dataclass(frozen=True)
class Launch:
    """What a component's start and readiness probe see."""

    run: RunDir
    config: Effective
    environ: Mapping[str, str] | None  # the processes' environment (None: this process's)
    url: str  # where clients reach the stack (nginx)
    verify: ssl.SSLContext | bool  # how this host verifies the stack's HTTPS

    @property
    def settings(self) -> Settings:
        return self.config.settings


@dataclass(frozen=True)
class Probe:
    """A component is ready once `ready` says so; `waiting` completes '... within 60 s' if it never does."""

    ready: Callable[[Launch], bool]
    waiting: Callable[[Launch], str]


def answers_200(url: Callable[[Launch], str], where: str = "") -> Probe:
    """Ready when GET `url` answers 200."""

    def ready(launch: Launch) -> bool:
        try:
            return httpx2.get(url(launch), timeout=2, verify=launch.verify).status_code == 200
        except httpx2.HTTPError:
            return False

    return Probe(ready, lambda launch: f"{url(launch)} did not answer{' ' + where if where else ''}")


def nothing(*_: object) -> None:
    """A hook a component does not need."""


def this_process_env(_: Launch) -> None:
    return None


def in_root(_: Launch) -> Path:
    return ROOT


def no_ports(_: Settings) -> list[Address]:
    return []


def always(_: Settings) -> bool:
    return True


def nothing_to_say(*_: object) -> str:
    return ""


@dataclass(frozen=True)
class Component:
    name: str  # its processes' role in `make ps`, its key in Handle.pids(), its log `<run dir>/<name>.log`
    service: str  # its service in docker-compose.yml (and so in the swarm stack)
    command: Callable[[Launch], list[str]]
    cwd: Callable[[Launch], Path] = in_root
    env: Callable[[Launch], Mapping[str, str] | None] = this_process_env
    prepare: Callable[[RunDir, Effective], None] = nothing  # render what it reads, before any start
    check: Callable[[RunDir], None] = nothing  # refuse a rendered config (StackError) before any start
    # Before anything starts (at `up`, `reload` and `make check`): refuse what it would fail to run, in one
    # line (StackError); what it says when it would run fine.
    preflight: Callable[[RunDir, Effective, Mapping[str, str] | None], str] = nothing_to_say
    listens: Callable[[Settings], list[Address]] = no_ports  # refused at `up` when taken
    claims: Callable[[Settings], None] = nothing  # refuse at `up` (StackError) what else it would take
    port_knobs: tuple[str, ...] = ()  # what a stack beside others sets to free ports (free_port_knobs)
    ready: Probe | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    grace: Callable[[Settings], float] = lambda _: 10.0  # then SIGKILL
    # `down` stops components in reverse start order, each once those stopped before it have exited, or
    # sooner once this says it has nothing left in flight (given what `up` recorded of the stack).
    drained: Callable[[State], bool] | None = None
    title: str = ""  # its main process in `make ps` (default: name); children show as `<name> worker`
    # Its stderr in a log of its own, `<run dir>/<name>-error.log`, beside stdout's `<name>.log`.
    error_log: bool = False
    wanted: Callable[[Settings], bool] = always  # whether the stack runs it with these knobs
    # Started only once every component before it is ready (it exits when what it reads does not answer).
    after_ready: bool = False
    # What `make reload` sends it once its files are rendered again (gunicorn's and nginx's reloads are
    # the local runtime's own); None: nothing.
    reload_signal: signal.Signals | None = None
    announce: Callable[[Settings], str] | None = None  # a line `make up` prints once the stack is up

    @property
    def logs(self) -> tuple[str, ...]:
        """Its log names (`<run dir>/<log>.log`): stdout (and stderr, unless it has an error log), stderr."""
        return (self.name, f"{self.name}-error") if self.error_log else (self.name,)


# --- the app: gunicorn with our uvicorn workers ------------------------------------------------------


def process_env(run: RunDir, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The app's processes' environment: the rendered knobs, the metrics directory, and the repository
    root on PYTHONPATH (the platform is not installed in the app's own virtualenv)."""
    return {
        **(os.environ if environ is None else environ),
        "STACK_ENV_FILE": str(run.env_file),
        "PROMETHEUS_MULTIPROC_DIR": str(run.metrics_dir),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": appenv.pythonpath(environ),
    }


def app_where(config: Effective, environ: Mapping[str, str] | None) -> preflight.Where:
    """The app's python on this host (its virtualenv built first when APP_REQUIREMENTS asks for one)."""
    python = appenv.ensure_app_python(config.settings, environ)
    return preflight.on_host(python, preflight.loader_env(config, environ, appenv.pythonpath(environ)))


def preflight_app(run: RunDir, config: Effective, environ: Mapping[str, str] | None) -> str:
    return preflight.check_app(app_where(config, environ), config, run.path / preflight.LOG)


def prepare_app(run: RunDir, config: Effective) -> None:
    run.metrics_dir.mkdir(exist_ok=True)
    run.env_file.write_text(config.env_file_text())


def claim_unix_bind(settings: Settings) -> None:
    socket_path = unix_socket_path(settings.gunicorn_bind)
    if socket_path is not None:
        check_unix_bind(Path(socket_path))


def app_listens(settings: Settings) -> list[Address]:
    if unix_socket_path(settings.gunicorn_bind) is not None:
        return []  # a socket file: check_unix_bind refuses one in use
    return [("GUNICORN_BIND", *split_bind(settings.gunicorn_bind))]


def app_requests_in_flight(bind: str, metrics_path: str) -> float:
    """HTTP requests the app is serving now, besides the asking one (its metrics, on the gunicorn bind)."""
    try:
        text = get_from_app(bind, metrics_path).text
    except httpx2.HTTPError:
        return 0
    gauges = [line.split()[-1] for line in text.splitlines() if line.startswith("app_requests_in_flight ")]
    return float(gauges[0]) - 1 if gauges else 0


def get_from_app(bind: str, path: str) -> httpx2.Response:
    """GET `path` from gunicorn itself (not through nginx), on its host:port or its unix socket."""
    socket_path = unix_socket_path(bind)
    if socket_path is None:
        host, port = split_bind(bind)
        return httpx2.get(f"http://{host}:{port}{path}", timeout=2)
    with httpx2.Client(transport=httpx2.HTTPTransport(uds=socket_path), timeout=2) as client:
        return client.get(f"http://{LOOPBACK}{path}")


def check_unix_bind(path: Path) -> None:
    """GUNICORN_BIND=unix:path, refused in one line where gunicorn or nginx would fail on it later:
    gunicorn replaces any socket file at the path, even one another server still listens on."""
    knob = f"GUNICORN_BIND=unix:{path}"
    if not path.parent.is_dir():
        raise StackError(f"{knob}: directory {path.parent} does not exist; create it or choose another")
    if path.exists() and not path.is_socket():
        raise StackError(f"{knob}: {path} exists and is not a socket; choose another path")
    if bind_in_use(f"unix:{path}"):
        raise StackError(f"{knob}: a process already accepts connections on it; choose another path")
    if os.geteuid() == 0:
        # nginx started by root runs its workers as `nobody`, which must enter every directory on the way.
        for directory in path.parents:
            if not directory.stat().st_mode & stat.S_IXOTH:
                raise StackError(
                    f"{knob}: nginx's workers run as nobody (nginx started by root) and may not enter "
                    f"{directory} (mode {stat.S_IMODE(directory.stat().st_mode):o}); choose a socket "
                    "directory every user may enter, e.g. under /run or /tmp"
                )


# --- redis: the rooms' backplane (service/rooms/), unless REDIS_URL names another -------------------


def redis_command(launch: Launch) -> list[str]:
    """No persistence (the rooms keep a bounded history, not data): a restart loses what it held."""
    settings = launch.settings
    return [
        find_redis_server(),
        *("--port", str(settings.redis_port), "--bind", LOOPBACK, "--protected-mode", "yes"),
        *("--save", "", "--appendonly", "no", "--dir", str(launch.run.path)),
        *("--daemonize", "no", "--logfile", "", "--loglevel", "notice"),
    ]


def redis_answers(launch: Launch) -> bool:
    try:
        with socket.create_connection((LOOPBACK, launch.settings.redis_port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_wanted(settings: Settings) -> bool:
    """The stack's own Redis: for the demo app (its rooms) when REDIS_URL names none; another APP_MODULE
    gets none (an app of its own that wants Redis sets REDIS_URL)."""
    return not settings.redis_url and settings.app_module == DEMO_APP


REDIS = Component(
    name="redis",
    service="redis",
    title="redis-server",
    command=redis_command,
    listens=lambda settings: [("REDIS_PORT", LOOPBACK, settings.redis_port)],
    port_knobs=("REDIS_PORT",),
    wanted=redis_wanted,
    ready=Probe(
        redis_answers,
        lambda launch: f"redis-server on {LOOPBACK}:{launch.settings.redis_port} did not answer PING",
    ),
    stop_signal=signal.SIGTERM,
    grace=lambda _: 10.0,
)


APP = Component(
    name="gunicorn",
    service="app",
    title="gunicorn master",
    command=lambda launch: [
        *(str(appenv.app_python(launch.settings)), "-m", "gunicorn", "-c", str(GUNICORN_CONF)),
        *("--pid", str(launch.run.pid_file("gunicorn"))),
    ],
    env=lambda launch: process_env(launch.run, launch.environ),
    prepare=prepare_app,
    preflight=preflight_app,
    listens=app_listens,
    claims=claim_unix_bind,
    port_knobs=("GUNICORN_BIND",),
    stop_signal=signal.SIGTERM,  # graceful: in-flight requests finish, WebSockets close with 1012
    grace=lambda settings: settings.gunicorn_graceful_timeout + 5,
    # nginx's WebSocket tunnels only end when the app closes them, so the app is stopped once nginx has
    # exited or the app has no HTTP request left in flight, not after nginx's whole grace.
    drained=lambda state: app_requests_in_flight(state.gunicorn_bind, state.metrics_path) <= 0,
)


# --- nginx in front ----------------------------------------------------------------------------------


def prepare_nginx(run: RunDir, config: Effective) -> None:
    rendered = render_nginx(config.settings)
    run.nginx_conf.write_text(rendered)
    for directory in (run.nginx_dir, *nginx_temp_dirs(rendered)):
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # nginx started by root drops its workers to `nobody`, which must write request-body temp files.
            import pwd

            nobody = pwd.getpwnam("nobody")
            os.chown(directory, nobody.pw_uid, nobody.pw_gid)


def check_nginx(nginx: str, run: RunDir) -> None:
    test = subprocess.run(
        [nginx, "-t", "-q", "-c", str(run.nginx_conf), "-e", "stderr"], capture_output=True, text=True
    )
    if test.returncode != 0:
        lines = test.stderr.strip().splitlines() or ["(no output)"]
        reason = next((line for line in lines if "[emerg]" in line), lines[-1])
        raise StackError(f"nginx -t rejected {run.nginx_conf}: {reason}")


def nginx_listens(settings: Settings) -> list[Address]:
    public = tls.client_host(settings.nginx_listen_address)
    return [
        ("HTTP_PORT", public, settings.listen_port),
        *[("HTTPS_PORT", public, settings.https_listen_port)] * settings.nginx_tls,
        ("NGINX_STATUS_PORT", LOOPBACK, settings.nginx_status_port),
    ]


NGINX = Component(
    name="nginx",
    service="nginx",
    title="nginx master",
    # stdout: the JSON access log (NGINX_ACCESS_LOG=/dev/stdout), every line one JSON object; stderr: the
    # error log (NGINX_ERROR_LOG=/dev/stderr, and -e for what nginx says before it has read its config),
    # in nginx-error.log.
    command=lambda launch: [
        *(find_nginx(), "-c", str(launch.run.nginx_conf)),
        *("-e", "stderr", "-g", "daemon off;"),
    ],
    error_log=True,
    cwd=lambda launch: launch.run.path,
    prepare=prepare_nginx,
    check=lambda run: check_nginx(find_nginx(), run),
    listens=nginx_listens,
    port_knobs=("HTTP_PORT", "HTTPS_PORT", "NGINX_STATUS_PORT"),
    ready=answers_200(lambda launch: f"{launch.url}{launch.settings.app_liveness_path}", "through nginx"),
    stop_signal=signal.SIGQUIT,  # stop accepting, finish open requests
    grace=lambda settings: settings.gunicorn_graceful_timeout + 5,
)

# --- Prometheus and nginx's exporter (MONITORING=1; deploy/prometheus/, stackctl/monitoring.py) ---------


def monitoring_on(settings: Settings) -> bool:
    return bool(settings.monitoring)


def prometheus_conf(run: RunDir) -> Path:
    return run.prometheus_dir / "prometheus.yml"


def prepare_prometheus(run: RunDir, config: Effective) -> None:
    (run.prometheus_dir / "data").mkdir(parents=True, exist_ok=True)
    settings = config.settings
    prometheus_conf(run).write_text(monitoring.render(settings, monitoring.local_scrape(settings)))


PROMETHEUS = Component(
    name="prometheus",
    service="prometheus",
    command=lambda launch: [
        find_prometheus(),
        f"--config.file={prometheus_conf(launch.run)}",
        f"--storage.tsdb.path={launch.run.prometheus_dir / 'data'}",
        f"--storage.tsdb.retention.time={launch.settings.prometheus_retention}",
        f"--web.listen-address={LOOPBACK}:{launch.settings.prometheus_port}",
    ],
    cwd=lambda launch: launch.run.prometheus_dir,
    wanted=monitoring_on,
    prepare=prepare_prometheus,
    check=lambda run: monitoring.check_config(find_promtool(), prometheus_conf(run)),
    listens=lambda settings: [("PROMETHEUS_PORT", LOOPBACK, settings.prometheus_port)],
    port_knobs=("PROMETHEUS_PORT",),
    ready=answers_200(lambda launch: f"{monitoring.url(launch.settings)}/-/ready"),
    reload_signal=signal.SIGHUP,  # re-reads its config and the rules
    announce=lambda settings: monitoring.announce(monitoring.url(settings)),
)

NGINX_EXPORTER = Component(
    name="nginx-exporter",
    service="nginx-exporter",
    # Flags with two dashes: Debian's 0.11 (Go's flag package) and upstream's 1.x (kingpin) both take them.
    command=lambda launch: [
        find_nginx_exporter(),
        f"--nginx.scrape-uri=http://{LOOPBACK}:{launch.settings.nginx_status_port}/stub_status",
        f"--web.listen-address={LOOPBACK}:{launch.settings.prometheus_nginx_exporter_port}",
    ],
    wanted=monitoring_on,
    after_ready=True,  # the 0.x exporter exits at start when stub_status does not answer
    listens=lambda settings: [
        ("PROMETHEUS_NGINX_EXPORTER_PORT", LOOPBACK, settings.prometheus_nginx_exporter_port)
    ],
    port_knobs=("PROMETHEUS_NGINX_EXPORTER_PORT",),
    ready=answers_200(
        lambda launch: f"http://{LOOPBACK}:{launch.settings.prometheus_nginx_exporter_port}/metrics"
    ),
)

# In start order; `down` stops them in reverse: the app's drain closes its rooms' members before Redis goes,
# and Prometheus sees the app and nginx to their end.
COMPONENTS: tuple[Component, ...] = (REDIS, APP, NGINX, PROMETHEUS, NGINX_EXPORTER)
SERVICES = tuple(component.service for component in COMPONENTS)
