"""The app servers a local stack can run behind the same nginx, declared once: for each its command (built
from the same knobs), the stack knobs it needs, which of its processes serve, and how it carries out each
event in a worker's life — a reload, recycling, a worker TERMed, KILLed or blocked, a stop — or that it has
no such mechanism. `make drill SERVER=...` runs the drills against each (loadtest/drill/); the local runtime
takes the app component's command from the entry (`app_component`).

    blueprint       gunicorn + our worker (the drain of service/platform/worker.py): what `make up` runs
    uvicorn-worker  gunicorn + uvicorn-worker's stock UvicornWorker: the same, without our drain
    gunicorn-asgi   gunicorn + its own `-k asgi` worker (gunicorn >= 24)
    uvicorn         `uvicorn --workers N`: uvicorn's own supervisor (SIGHUP restarts workers one at a time)
    granian         `granian --interface asgi --workers N`: granian's own supervisor (Rust HTTP)

The gunicorn ones differ only by GUNICORN_WORKER_CLASS: they run deploy/gunicorn.conf.py, so every runtime
can run them. uvicorn and granian are other programs: the local runtime only. Their flags come from the
blueprint's knobs where one means the same (the bind, workers, keep-alive, graceful timeouts, request
limits): the mapping is in each command below.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import psutil

from deploy.stackctl import appenv
from deploy.stackctl.components import APP, Component, Launch, process_env
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import split_bind
from service.platform import PLATFORM_APP
from service.settings import Settings, ToolInputs, unix_socket_path

STOCK_WORKER_CLASS = "uvicorn_worker.UvicornWorker"
DEFAULT = ToolInputs().server

Event = Literal["reload", "recycle", "worker-term", "worker-kill", "worker-timeout", "stop"]
EVENTS: tuple[Event, ...] = ("reload", "recycle", "worker-term", "worker-kill", "worker-timeout", "stop")


@dataclass(frozen=True)
class Mechanism:
    """How a server carries out one event, in the words a drill's row shows; `exists=False`: it has no
    such mechanism, and `how` says why."""

    how: str
    exists: bool = True
    # What a stack sets (knobs, or the server's own variables) so that the event happens during a drill.
    environ: Mapping[str, str] = field(default_factory=dict)


def none(why: str) -> Mechanism:
    return Mechanism(f"no such event: {why}", exists=False)


@dataclass(frozen=True)
class AppServer:
    name: str
    about: str
    process: str  # its main process's name: the component's name, its log `<process>.log`, `make ps`
    title: str  # its main process in `make ps`
    command: Callable[[Launch], list[str]]
    events: Mapping[Event, Mechanism]
    env: Callable[[Launch], Mapping[str, str] | None] = lambda launch: process_env(launch.run, launch.environ)
    knobs: Mapping[str, str] = field(default_factory=dict)  # stack knobs it needs (its worker class)
    helpers: tuple[str, ...] = ()  # command-line fragments of its children that serve nothing
    missing: Callable[[], str] = lambda: ""  # why it cannot run here ('' when it can)

    @property
    def runs_gunicorn_conf(self) -> bool:
        """It is gunicorn with deploy/gunicorn.conf.py and differs from the blueprint only by knobs."""
        return self.process == APP.name

    def mechanism(self, event: Event) -> Mechanism:
        return self.events[event]

    def is_worker(self, pid: int) -> bool:
        try:
            line = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            return False
        return not any(fragment in line for fragment in self.helpers)


def app_component(server: AppServer) -> Component:
    """The stack's app component when `server` runs the app: the blueprint's APP with its command."""
    if server.name == DEFAULT:
        return APP
    return replace(APP, name=server.process, title=server.title, command=server.command, env=server.env)


# --- gunicorn: deploy/gunicorn.conf.py, three worker classes ----------------------------------------


def gunicorn_asgi_missing() -> str:
    import gunicorn
    import gunicorn.workers

    if "asgi" in gunicorn.workers.SUPPORTED_WORKERS:
        return ""
    return f"gunicorn {gunicorn.__version__} has no `-k asgi` worker (it came in 24)"


GUNICORN_HUP = "SIGHUP to the gunicorn master: it forks the new workers, then TERMs the old ones"
GUNICORN_RECYCLE = (
    "GUNICORN_MAX_REQUESTS (+ up to _JITTER): a worker exits after that many requests, gunicorn forks "
    "its replacement"
)
GUNICORN_RESPAWN = "gunicorn's master forks a replacement"
GUNICORN_TIMEOUT = (
    "gunicorn's heartbeat: a worker that has not notified the master for GUNICORN_TIMEOUT is killed "
    "(SIGABRT) and replaced"
)


def gunicorn_events(drain: str) -> dict[Event, Mechanism]:
    """The gunicorn master's mechanisms; `drain`: what the worker class does when one of its workers ends."""
    return {
        "reload": Mechanism(f"{GUNICORN_HUP}; {drain}"),
        "recycle": Mechanism(f"{GUNICORN_RECYCLE}; {drain}"),
        "worker-term": Mechanism(f"SIGTERM to one worker, {GUNICORN_RESPAWN}; {drain}"),
        "worker-kill": Mechanism(f"SIGKILL to one worker, {GUNICORN_RESPAWN}"),
        "worker-timeout": Mechanism(GUNICORN_TIMEOUT),
        "stop": Mechanism(
            "SIGTERM to the gunicorn master: it TERMs every worker and SIGKILLs those left after "
            f"GUNICORN_GRACEFUL_TIMEOUT; {drain}"
        ),
    }


OUR_DRAIN = (
    "our worker drains (stops accepting, answers with Connection: close, leaves idle connections to "
    "nginx, WebSockets closed with 1012 over UVICORN_WS_CLOSE_SPREAD)"
)
STOCK_DRAIN = (
    "uvicorn stops accepting, closes idle keep-alive connections at once, finishes in-flight requests, "
    "closes WebSockets with 1012"
)
ASGI_DRAIN = (
    "gunicorn's asgi worker stops accepting, answers on open connections with Connection: close, and waits "
    "up to GUNICORN_GRACEFUL_TIMEOUT for every connection (WebSockets too) to end"
)


# --- uvicorn --workers --------------------------------------------------------------------------------


def bind_flags(settings: Settings) -> list[str]:
    socket_path = unix_socket_path(settings.gunicorn_bind)
    if socket_path is not None:
        return ["--uds", socket_path]
    host, port = split_bind(settings.gunicorn_bind)
    return ["--host", host, "--port", str(port)]


def uvicorn_command(launch: Launch) -> list[str]:
    """uvicorn's own flags from the knobs that mean the same there: the settings our worker passes to
    uvicorn (service/platform/worker.py), gunicorn's bind, backlog, keep-alive, forwarded IPs and request
    limit (GUNICORN_MAX_REQUESTS -> --limit-max-requests). --timeout-worker-healthcheck keeps uvicorn's 5 s: a
    thread of the worker answers its ping, so it is no heartbeat of the event loop (GUNICORN_TIMEOUT's
    meaning), and a longer one kept the supervisor waiting on an exiting worker (docs/SERVERS.md)."""
    s = launch.settings
    python = str(appenv.app_python(s))
    command = [python, "-m", "uvicorn", PLATFORM_APP, *bind_flags(s), "--workers", str(s.workers)]
    command += ["--backlog", str(s.gunicorn_backlog), "--timeout-keep-alive", str(s.gunicorn_keepalive)]
    command += ["--timeout-graceful-shutdown", str(s.uvicorn_timeout_graceful_shutdown)]
    command += ["--proxy-headers", "--forwarded-allow-ips", s.gunicorn_forwarded_allow_ips]
    command += ["--loop", s.uvicorn_loop, "--http", s.uvicorn_http, "--ws", s.uvicorn_ws]
    command += ["--ws-max-size", str(s.uvicorn_ws_max_size)]
    command += ["--ws-ping-interval", str(s.uvicorn_ws_ping_interval)]
    command += ["--ws-ping-timeout", str(s.uvicorn_ws_ping_timeout)]
    command += ["--ws-per-message-deflate", str(bool(s.uvicorn_ws_per_message_deflate))]
    if s.uvicorn_limit_concurrency:
        command += ["--limit-concurrency", str(s.uvicorn_limit_concurrency)]
    if s.gunicorn_max_requests:
        command += ["--limit-max-requests", str(s.gunicorn_max_requests)]
        command += ["--limit-max-requests-jitter", str(s.gunicorn_max_requests_jitter)]
    return [*command, "--no-access-log", "--no-server-header", "--log-level", s.gunicorn_log_level]


def uvicorn_env(launch: Launch) -> dict[str, str]:
    """uvicorn's command line reads UVICORN_<OPTION> from its environment, and the blueprint's UVICORN_*
    knobs share that prefix (UVICORN_LIMIT_CONCURRENCY=0 means no limit here, a limit of 0 there): the
    knobs reach it as the flags above, none as a variable."""
    env = process_env(launch.run, launch.environ)
    return {name: value for name, value in env.items() if not name.startswith("UVICORN_")}


UVICORN_RESPAWN = (
    "uvicorn's supervisor finds it dead at its next check (every 0.5 s) and starts a replacement"
)
UVICORN_SHUTDOWN = (
    "the worker stops accepting, closes idle keep-alive connections at once, finishes in-flight requests "
    "up to UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN, closes WebSockets with 1012"
)

# --- granian ------------------------------------------------------------------------------------------


def granian_command(launch: Launch) -> list[str]:
    """granian's flags from the knobs that mean the same there: the bind, workers, backlog and
    GUNICORN_GRACEFUL_TIMEOUT (-> --workers-kill-timeout: a stopping worker is killed after it). It
    respawns a worker that died (--respawn-failed-workers; without it one dead worker stops granian)."""
    s = launch.settings
    command = [str(appenv.app_python(s)), "-m", "granian", "--interface", "asgi", *bind_flags(s)]
    command += ["--workers", str(s.workers), "--backlog", str(max(128, s.gunicorn_backlog))]
    command += ["--respawn-failed-workers", "--workers-kill-timeout", str(s.gunicorn_graceful_timeout)]
    return [*command, "--no-access-log", "--log-level", s.gunicorn_log_level, PLATFORM_APP]


def granian_missing() -> str:
    return "" if importlib.util.find_spec("granian") else "granian is not installed (pip install granian)"


GRANIAN_RESPAWN = "granian respawns it (--respawn-failed-workers)"
GRANIAN_SHUTDOWN = (
    "the worker stops accepting, finishes in-flight requests and closes its connections (WebSockets "
    "included), killed after --workers-kill-timeout"
)
GRANIAN_RESPAWN_STEP = (
    "one worker at a time: the new one is spawned, --respawn-interval (3.5 s) later the old one TERMed"
)
# --workers-lifetime, granian's age limit, is at least 60 s; its RSS limit goes through the same respawn.
GRANIAN_RECYCLE_ENV = {"GRANIAN_WORKERS_MAX_RSS": "1", "GRANIAN_RSS_SAMPLE_INTERVAL": "2"}


SERVERS: dict[str, AppServer] = {
    server.name: server
    for server in (
        AppServer(
            "blueprint",
            "gunicorn + our worker (GUNICORN_WORKER_CLASS's default), as `make up` runs it",
            APP.name,
            "gunicorn master",
            APP.command,
            gunicorn_events(OUR_DRAIN),
        ),
        AppServer(
            "uvicorn-worker",
            f"gunicorn + uvicorn-worker's stock {STOCK_WORKER_CLASS}: the blueprint without its drain",
            APP.name,
            "gunicorn master",
            APP.command,
            gunicorn_events(STOCK_DRAIN),
            knobs={"GUNICORN_WORKER_CLASS": STOCK_WORKER_CLASS},
        ),
        AppServer(
            "gunicorn-asgi",
            "gunicorn + its own ASGI worker (`-k asgi`)",
            APP.name,
            "gunicorn master",
            APP.command,
            gunicorn_events(ASGI_DRAIN),
            knobs={"GUNICORN_WORKER_CLASS": "asgi"},
            missing=gunicorn_asgi_missing,
        ),
        AppServer(
            "uvicorn",
            "`uvicorn --workers N`: uvicorn's own supervisor",
            "uvicorn",
            "uvicorn supervisor",
            uvicorn_command,
            {
                "reload": Mechanism(
                    "SIGHUP to the uvicorn supervisor: it restarts the workers one at a time, each new one "
                    f"ready before the old one is TERMed; {UVICORN_SHUTDOWN}"
                ),
                "recycle": Mechanism(
                    "--limit-max-requests GUNICORN_MAX_REQUESTS --limit-max-requests-jitter _JITTER: a "
                    f"worker exits after that many requests ({UVICORN_SHUTDOWN}); {UVICORN_RESPAWN}"
                ),
                "worker-term": Mechanism(f"SIGTERM to one worker: {UVICORN_SHUTDOWN}; {UVICORN_RESPAWN}"),
                "worker-kill": Mechanism(f"SIGKILL to one worker; {UVICORN_RESPAWN}"),
                "worker-timeout": none(
                    "uvicorn's supervisor pings each worker (--timeout-worker-healthcheck) through a pipe "
                    "a thread of the worker answers, so a blocked event loop still answers and is never "
                    "killed"
                ),
                "stop": Mechanism(
                    f"SIGTERM to the uvicorn supervisor: it TERMs every worker and waits; {UVICORN_SHUTDOWN}"
                ),
            },
            env=uvicorn_env,
            helpers=("multiprocessing.resource_tracker",),
        ),
        AppServer(
            "granian",
            "`granian --interface asgi --workers N`: granian's own supervisor, Rust HTTP",
            "granian",
            "granian main",
            granian_command,
            {
                "reload": Mechanism(
                    f"SIGHUP to granian's main process: it respawns every worker, {GRANIAN_RESPAWN_STEP}; "
                    f"{GRANIAN_SHUTDOWN}"
                ),
                "recycle": Mechanism(
                    "--workers-max-rss 1 MiB sampled every --rss-sample-interval 2 s: every worker is over "
                    f"it and is respawned, {GRANIAN_RESPAWN_STEP} (the respawn --workers-lifetime uses; that "
                    "one is at least 60 s); granian counts no requests",
                    environ=GRANIAN_RECYCLE_ENV,
                ),
                "worker-term": Mechanism(f"SIGTERM to one worker: {GRANIAN_SHUTDOWN}; {GRANIAN_RESPAWN}"),
                "worker-kill": Mechanism(f"SIGKILL to one worker; {GRANIAN_RESPAWN}"),
                "worker-timeout": none(
                    "granian has no worker heartbeat: a worker whose event loop is blocked is never killed"
                ),
                "stop": Mechanism(
                    f"SIGTERM to granian's main process: it TERMs every worker; {GRANIAN_SHUTDOWN}"
                ),
            },
            missing=granian_missing,
        ),
    )
}
NAMES = tuple(SERVERS)


def get(name: str) -> AppServer:
    try:
        return SERVERS[name]
    except KeyError:
        raise StackError(f"SERVER={name!r}: choose one of {', '.join(NAMES)}") from None
