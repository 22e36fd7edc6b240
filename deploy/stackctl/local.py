"""The local runtime: the stack's components (components.py: redis-server, gunicorn, nginx, and Prometheus and
its nginx exporter with MONITORING=1) as background
processes of this host, managed by pid.

Everything a stack writes lives in one run directory (default `.run/local`): rendered configs, pid files,
logs, the Prometheus multiprocess directory and `state.json`, which records what `up` started so that
`down` stops exactly that and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import psutil

from deploy.stackctl import appenv, preflight, tls
from deploy.stackctl.components import APP, COMPONENTS, NGINX, Component, Launch, app_where
from deploy.stackctl.components import GUNICORN_CONF as GUNICORN_CONF
from deploy.stackctl.components import check_nginx as check_nginx
from deploy.stackctl.components import check_unix_bind as check_unix_bind
from deploy.stackctl.components import process_env as process_env
from deploy.stackctl.config import ROOT, Effective
from deploy.stackctl.errors import AlreadyRunning, StackError
from deploy.stackctl.ports import LOOPBACK, bind_in_use, port_in_use
from deploy.stackctl.procs import alive, descendants, signal_if_alive, stop
from deploy.stackctl.rundir import RunDir as RunDir
from deploy.stackctl.rundir import Started, State
from deploy.stackctl.rundir import pinned_paths as pinned_paths
from deploy.stackctl.runtime import Runtime
from deploy.stackctl.servers import DEFAULT, AppServer, app_component
from deploy.stackctl.servers import get as get_server
from deploy.stackctl.tools import find_openssl
from service.settings import Settings, unix_socket_path

NO_TLS = "none (NGINX_TLS=0)"
READY_WITHIN = 60.0


def nginx_inputs(run: RunDir, settings: Settings) -> list[bytes]:
    """What nginx reads at a reload: its rendered config and, with TLS, the certificate and key."""
    served = tls.files(settings) if settings.nginx_tls else None
    paths = [run.nginx_conf, *((served.cert, served.key) if served else ())]
    return [path.read_bytes() if path.is_file() else b"" for path in paths]


def ensure_tls(settings: Settings) -> tls.Files | None:
    """With NGINX_TLS=1, the certificate and key nginx will serve, ready (generated ones created or
    renewed); refused in one line naming the knob when nginx could not serve them."""
    if not settings.nginx_tls:
        return None
    try:
        return tls.ensure(settings, find_openssl())
    except tls.TlsError as error:
        raise StackError(str(error)) from None


def verification(served: tls.Files | None) -> ssl.SSLContext | bool:
    """How this host's probes verify the stack's HTTPS (no TLS: nothing to verify)."""
    return tls.client_context(served) if served else True


def wanted(components: Sequence[Component], settings: Settings) -> list[Component]:
    """The components a stack with these knobs runs (MONITORING=1 adds Prometheus and the exporter)."""
    return [component for component in components if component.wanted(settings)]


def prepare(run: RunDir, config: Effective, components: Sequence[Component] = COMPONENTS) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    for component in wanted(components, config.settings):
        component.prepare(run, config)


def batches(components: Sequence[Component]) -> list[list[Component]]:
    """Start order in steps: a component `after_ready` begins a new one (after the earlier are ready)."""
    steps: list[list[Component]] = []
    for component in components:
        if component.after_ready or not steps:
            steps.append([])
        steps[-1].append(component)
    return steps


def rotating_log(path: Path, config: Effective) -> subprocess.Popen[bytes]:
    """A deploy/stackctl/logpipe.py process writing what it reads to `path`, rotated at LOG_MAX_MB."""
    settings = config.settings
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "deploy.stackctl.logpipe", str(path)),
            *("--max-mb", str(settings.log_max_mb), "--keep", str(settings.log_files - 1)),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # else `stackctl up`s caller would wait for its stderr to close
        start_new_session=True,
    )


def wait_ready(
    launch: Launch, processes: Mapping[str, subprocess.Popen[bytes]], components: Sequence[Component]
) -> None:
    """Until every component's readiness probe holds; refused as soon as one of `processes` exits."""
    deadline = time.monotonic() + READY_WITHIN
    probes = [component.ready for component in components if component.ready]
    waiting = probes
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise StackError(exited_while_starting(launch.run, name, process.returncode))
        waiting = [probe for probe in probes if not probe.ready(launch)]
        if not waiting:
            return
        time.sleep(0.2)
    raise StackError(f"{waiting[0].waiting(launch)} within {READY_WITHIN:.0f} s; see `make logs`")


def exited_while_starting(run: RunDir, name: str, code: int | None) -> str:
    """Why a component exited while starting: the app's own `APP_MODULE=...` line when a worker said one
    (gunicorn halts on a worker's exit 3 or 4 instead of booting it again), else its log's last lines."""
    text = run.log(name).read_text(errors="replace") if run.log(name).exists() else ""
    said = preflight.halted_line(text)
    if said is not None:
        return f"{said} ({name} stopped, exit {code}; see {run.log(name)})"
    errors = run.log(f"{name}-error")  # nginx writes its own to a file of its own
    tail = (errors.read_text(errors="replace") if errors.exists() else text).strip().splitlines()[-5:]
    return f"{name} exited with {code} while starting: {' | '.join(tail)}"


def run_preflight(
    run: RunDir, config: Effective, environ: Mapping[str, str] | None, components: Sequence[Component]
) -> str:
    """Every component's pre-flight, before anything starts: what they said, one line each."""
    said = [component.preflight(run, config, environ) for component in components]
    return "\n".join(line for line in said if line)


def up(
    run: RunDir,
    config: Effective,
    environ: Mapping[str, str] | None = None,
    components: Sequence[Component] = COMPONENTS,
) -> State:
    """Start the components in order (those these settings want); `environ` is the processes' environment
    (default: this one's)."""
    settings = config.settings
    state = run.load_state()
    if state and any(alive(pid) for pid in state.pids.values()):
        raise AlreadyRunning(state.url, run.path)

    components = wanted(components, settings)
    ports = [address for component in components for address in component.listens(settings)]
    for knob, host, port in ports:
        if port_in_use(host, port):
            raise StackError(f"{knob}: port {port} is already in use by another process; choose a free one")
    for component in components:
        component.claims(settings)
    said = run_preflight(run, config, environ, components)
    if said:
        print(said)

    served = ensure_tls(settings)
    prepare(run, config, components)
    for component in components:
        component.check(run)

    state = State(
        {},
        ports,
        settings.listen_port,
        settings.gunicorn_bind,
        settings.nginx_status_port,
        settings.https_listen_port if served else 0,
        settings.nginx_listen_address,
        settings.app_liveness_path,
        settings.app_metrics_path,
        str(appenv.app_python(settings)),
    )
    launch = Launch(run, config, environ, state.url, verification(served))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for step in batches(components):
            processes.update(start_processes(launch, step, state))
            wait_ready(launch, processes, [c for c in components if c.name in processes])
    except StackError:
        down(run, quiet=True, components=components)
        raise
    print(f"stack is up (local runtime, {settings.workers} workers): {state.url}")
    for line in tls.trust_hint(served, state.url, state.plain_url) if served else []:
        print(line)
    for component in components:
        if component.announce:
            print(component.announce(settings))
    return state


def start_processes(
    launch: Launch, components: Sequence[Component], state: State
) -> dict[str, subprocess.Popen[bytes]]:
    """Start these components, each with its log pipes, and record them in the state (saved)."""
    commands = {component.name: component.command(launch) for component in components}
    processes = {}
    for component in components:
        processes[component.name], state.started[component.name] = spawn(
            component, launch, commands[component.name]
        )
    launch.run.save_state(state)
    return processes


def spawn(
    component: Component, launch: Launch, command: list[str]
) -> tuple[subprocess.Popen[bytes], Started]:
    """One component's process, its output through rotating log pipes (stderr its own with error_log)."""
    pipes = [rotating_log(launch.run.log(name), launch.config) for name in component.logs]
    process = subprocess.Popen(
        command,
        cwd=component.cwd(launch),
        env=component.env(launch),
        stdout=pipes[0].stdin,
        stderr=pipes[-1].stdin if component.error_log else subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    for pipe in pipes:
        if pipe.stdin:
            pipe.stdin.close()  # the server holds the write ends now; EOF when it exits
    started = Started(
        process.pid,
        pipes[0].pid,
        component.stop_signal.name,
        component.grace(launch.settings),
        pipes[-1].pid if component.error_log else 0,
    )
    return process, started


def stop_component(run: RunDir, name: str) -> None:
    """Stop one running component as `down` would (its stop signal, then SIGKILL after its grace); the
    rest of the stack runs on. `start_component` starts it again."""
    state = run.load_state()
    if state is None or name not in state.started:
        raise StackError(f"no {name} in the stack of {run.path}")
    each = state.started[name]
    stop(each.pid, signal.Signals[each.stop_signal], each.grace)
    for log_pid in (each.log_pid, each.error_log_pid):
        if log_pid:
            stop(log_pid, signal.SIGTERM, 5, wait_first=5)


def start_component(
    run: RunDir, config: Effective, name: str, components: Sequence[Component] = COMPONENTS
) -> None:
    """Start a component `stop_component` stopped, with the stack's config, and wait until it is ready."""
    state = run.load_state()
    known = {component.name: component for component in components}
    if state is None or name not in state.started or name not in known:
        raise StackError(f"no {name} in the stack of {run.path}")
    if alive(state.started[name].pid):
        raise StackError(f"{name} ({state.started[name].pid}) is running; stop it first")
    component = known[name]
    launch = Launch(run, config, None, state.url, verification(ensure_tls(config.settings)))
    process, state.started[name] = spawn(component, launch, component.command(launch))
    run.save_state(state)
    wait_ready(launch, {name: process}, [component])


def down(run: RunDir, quiet: bool = False, components: Sequence[Component] = COMPONENTS) -> None:
    """Stop what state.json says `up` started, in reverse start order (components.Component.drained)."""
    state = run.load_state()
    if state is None:
        if not quiet:
            print(f"nothing to stop: no stack state in {run.path}")
        return
    known = {component.name: component for component in components}
    order = list(reversed(state.started.items()))
    children = [child for each in state.started.values() for child in descendants(each.pid)]
    signalled: list[tuple[int, float]] = []  # pid and the end of its grace, of each one signalled so far
    for name, each in order:
        drained = known[name].drained if name in known else None
        if signalled:
            deadline = max(until for _, until in signalled)
            while (
                any(alive(pid) for pid, _ in signalled)
                and time.monotonic() < deadline
                and not (drained and drained(state))
            ):
                time.sleep(0.2)
        signal_if_alive(each.pid, signal.Signals[each.stop_signal])
        signalled.append((each.pid, time.monotonic() + each.grace))
    # The first one stopped gets what is left of its grace, each later one its whole grace once those
    # before it are gone.
    for position, (_, each) in enumerate(order):
        left = signalled[0][1] - time.monotonic() if position == 0 else each.grace
        stop(each.pid, signal.Signals[each.stop_signal], max(1.0, left))
    for child in children:
        stop(child, signal.SIGTERM, 5)
    for pid in state.log_pids:  # they end by themselves at EOF, once nothing writes to their pipe
        stop(pid, signal.SIGTERM, 5, wait_first=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        any(port_in_use(host, port) for _, host, port in state.ports)
        or (unix_socket_path(state.gunicorn_bind) is not None and bind_in_use(state.gunicorn_bind))
    ):
        time.sleep(0.1)
    run.state.unlink(missing_ok=True)
    if not quiet:
        stopped = ", ".join(f"{name} {each.pid}" for name, each in state.started.items())
        print(f"stopped the stack of {run.path} ({stopped})")


def app_of(components: Sequence[Component]) -> Component:
    return next((c for c in components if c.service == APP.service), APP)


def workers_of(master: int, server: AppServer) -> list[int]:
    """The app server's processes that serve: its main process's descendants but its helpers."""
    return [pid for pid in descendants(master) if server.is_worker(pid)]


def reload(
    run: RunDir,
    config: Effective,
    components: Sequence[Component] = COMPONENTS,
    server: AppServer | None = None,
) -> None:
    """HUP to the app server (new workers: gunicorn, uvicorn and granian alike), and nginx HUP only when
    its config or certificate changed."""
    server = server or get_server(DEFAULT)
    name = app_of(components).name
    state = run.load_state()
    app, nginx = (state.pids.get(name, 0), state.pids.get(NGINX.name, 0)) if state else (0, 0)
    if state is None or not alive(app):
        raise StackError(f"no running stack in {run.path}; start it with `make up`")
    settings = config.settings
    https_port = settings.https_listen_port if settings.nginx_tls else NO_TLS
    for knob, old, new in (
        ("HTTP_PORT", state.http_port, settings.listen_port),
        ("GUNICORN_BIND", state.gunicorn_bind, settings.gunicorn_bind),
        ("NGINX_STATUS_PORT", state.status_port, settings.nginx_status_port),
        ("HTTPS_PORT", state.https_port or NO_TLS, https_port),
        ("NGINX_LISTEN_ADDRESS", state.listen_address, settings.nginx_listen_address),
    ):
        if old != new:
            raise StackError(
                f"{knob} changed from {old} to {new}: a reload cannot move ports; run `make down && make up`"
            )
    components = wanted(components, settings)
    running = [each for each in state.started if each not in (name, NGINX.name)]
    wanted_now = [c.name for c in components if c.name not in (name, NGINX.name)]
    if running != wanted_now:
        # MONITORING decides Prometheus's; REDIS_URL and APP_MODULE whether the stack runs its own Redis.
        knobs = f"MONITORING={settings.monitoring}, REDIS_URL={settings.redis_url or '(empty)'}"
        raise StackError(
            f"{knobs}: the stack runs {', '.join(running) or 'no'} extra components "
            f"and would run {', '.join(wanted_now) or 'none'}; a reload starts and stops none: run "
            "`make down && make up`"
        )
    before = {knob: port for knob, _, port in state.ports}
    for knob, _, port in (address for c in components for address in c.listens(settings)):
        if before.get(knob, port) != port:
            raise StackError(
                f"{knob} changed from {before[knob]} to {port}: a reload cannot move ports; run "
                "`make down && make up`"
            )
    python = str(appenv.app_python(settings))
    if state.app_python and python != state.app_python:
        raise StackError(
            f"APP_REQUIREMENTS={settings.app_requirements or '(empty)'}: the app's environment would change "
            f"from {state.app_python} to {python}, and a reload keeps gunicorn's; run `make down && make up`"
        )
    run_preflight(run, config, None, components)  # a broken app refused while the old workers serve
    nginx_before = nginx_inputs(run, settings)
    served = ensure_tls(settings)
    old_workers = set(workers_of(app, server))
    prepare(run, config, components)
    for component in components:
        component.check(run)
    nginx_changed = nginx_inputs(run, settings) != nginx_before
    os.kill(app, signal.SIGHUP)
    for component in components:
        pid = state.pids.get(component.name, 0)
        if component.reload_signal is not None and pid:
            signal_if_alive(pid, component.reload_signal)
    if nginx_changed:
        # Only then: a reloading nginx closes idle client keep-alive connections, and a client that sent a
        # request on one at that moment gets no answer (nginx cannot avoid it; clients that retry hide it).
        os.kill(nginx, signal.SIGHUP)
    # gunicorn replaces every worker at once; uvicorn and granian one after another, each old one given
    # up to its graceful timeout.
    deadline = time.monotonic() + (settings.gunicorn_graceful_timeout + 10) * settings.workers
    while time.monotonic() < deadline:
        current = set(workers_of(app, server))
        if not (current & old_workers) and len(current) >= settings.workers:
            break
        time.sleep(0.1)
    else:
        raise StackError(f"{name} did not replace its workers in time; see `make logs`")
    state = replace(state, liveness_path=settings.app_liveness_path, metrics_path=settings.app_metrics_path)
    run.save_state(state)
    wait_ready(Launch(run, config, None, state.url, verification(served)), {}, components)
    nginx_done = f"nginx re-read {run.nginx_conf}" if nginx_changed else "nginx unchanged (not reloaded)"
    print(f"reloaded: {settings.workers} new workers, {nginx_done}")


def ps(run: RunDir, components: Sequence[Component] = COMPONENTS) -> None:
    state = run.load_state()
    if state is None:
        print(f"no stack in {run.path}")
        return
    titles = {component.name: component.title or component.name for component in components}
    print(f"{'PID':>7}  {'ROLE':<16} {'STATUS':<9} COMMAND")
    for name, pid in state.pids.items():
        rows = [(titles.get(name, name), pid)] + [(f"  {name} worker", c) for c in descendants(pid)]
        for role, each in rows:
            try:
                process = psutil.Process(each)
                print(f"{each:>7}  {role:<16} {process.status():<9} {' '.join(process.cmdline())[:90]}")
            except psutil.NoSuchProcess:
                print(f"{each:>7}  {role:<16} {'gone':<9}")
    print(f"url: {state.url}   metrics/stub_status: http://{LOOPBACK}:{state.status_port}/metrics")


def log_names(run: RunDir, components: Sequence[Component]) -> list[str]:
    """Every component's, and those of a stack started with others (its state names them)."""
    state = run.load_state()
    names = [name for component in components for name in component.logs]
    others = [name for name in (state.started if state else {}) if name not in names]
    return names + others + [f"{name}-error" for name in others]


def logs(run: RunDir, follow: bool, components: Sequence[Component] = COMPONENTS) -> None:
    files = [str(run.log(name)) for name in log_names(run, components) if run.log(name).exists()]
    if not files:
        print(f"no logs in {run.path}")
        return
    with contextlib.suppress(KeyboardInterrupt):  # how `make logs -f` ends
        subprocess.run(["tail", *(["-F"] if follow else []), "-n", "50", *files], check=False)


class Local(Runtime):
    """The stack's components as processes of this host, by pid (state.json in the run dir)."""

    needs_record = True
    processes_here = True

    def __init__(self, components: Sequence[Component] = COMPONENTS, server: AppServer | None = None) -> None:
        self.components = tuple(components)
        self.server = server or get_server(DEFAULT)
        self.app = app_of(self.components)

    def serving(self, server: AppServer) -> Local:
        """The same components with `server`'s app component (deploy/stackctl/servers.py)."""
        if server.name == self.server.name:
            return self
        app = app_component(server)
        return Local(tuple(app if c.service == APP.service else c for c in self.components), server)

    def up(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        up(RunDir(run_dir), config, environ, self.components)

    def reload(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        reload(RunDir(run_dir), config, self.components, self.server)

    def scale(self, run_dir: Path, config: Effective, environ: Mapping[str, str], replicas: int) -> None:
        raise StackError(
            "`scale` is for the docker and swarm runtimes (RUNTIME=docker or swarm); the local runtime runs "
            "one gunicorn: set WEB_CONCURRENCY for more workers"
        )

    def down(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        down(RunDir(run_dir), components=self.components)

    def ps(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        ps(RunDir(run_dir), self.components)

    def logs(self, run_dir: Path, environ: Mapping[str, str], follow: bool) -> None:
        logs(RunDir(run_dir), follow, self.components)

    def port_knobs(self) -> tuple[str, ...]:
        return tuple(knob for component in self.components for knob in component.port_knobs)

    def app_where(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> preflight.Where:
        return app_where(config, environ)

    def preflight(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> str:
        return run_preflight(RunDir(run_dir), config, environ, self.components)

    def component(self, service: str) -> Component:
        for component in self.components:
            if component.service == service:
                return component
        raise StackError(f"no service {service!r} (known: {', '.join(c.service for c in self.components)})")

    def stop_service(self, run_dir: Path, environ: Mapping[str, str], service: str) -> None:
        stop_component(RunDir(run_dir), self.component(service).name)

    def start_service(
        self, run_dir: Path, config: Effective, environ: Mapping[str, str], service: str
    ) -> None:
        start_component(RunDir(run_dir), config, self.component(service).name, self.components)

    def render(self, run_dir: Path, config: Effective) -> None:
        run = RunDir(run_dir)
        prepare(run, config, self.components)
        print(f"rendered {run.env_file} and {run.nginx_conf}")

    def left_state(self, run_dir: Path) -> bool:
        return RunDir(run_dir).load_state() is not None

    def abandon(self, run_dir: Path) -> None:
        down(RunDir(run_dir), quiet=True, components=self.components)

    def pids(self, run_dir: Path) -> dict[str, int]:
        state = RunDir(run_dir).load_state()
        return state.pids if state else {}

    def app_pid(self, run_dir: Path) -> int | None:
        return self.pids(run_dir).get(self.app.name)

    def worker_pids(self, run_dir: Path) -> list[int]:
        master = self.app_pid(run_dir)
        return workers_of(master, self.server) if master else []

    def log_files(self, run_dir: Path) -> dict[str, Path]:
        """Of the components the stack in run_dir started (without a record: of every component)."""
        run = RunDir(run_dir)
        state = run.load_state()
        started = [c for c in self.components if state is None or c.name in state.started]
        return {name: run.log(name) for component in started for name in component.logs}

    def log_pids(self, run_dir: Path) -> list[int]:
        state = RunDir(run_dir).load_state()
        return state.log_pids if state else []
