"""The local runtime: gunicorn and nginx as background processes of this host, managed by pid.

Everything a stack writes lives in one run directory (default `.run/local`): rendered configs, pid files,
logs, the Prometheus multiprocess directory and `state.json`, which records what `up` started so that
`down` stops exactly that and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx2
import psutil

from deploy.stackctl import tls
from deploy.stackctl.config import ROOT, Effective, nginx_temp_dirs, render_nginx
from deploy.stackctl.errors import AlreadyRunning, StackError
from deploy.stackctl.ports import LOOPBACK, bind_in_use, port_in_use, split_bind
from deploy.stackctl.procs import alive, descendants, signal_if_alive, stop
from deploy.stackctl.tools import find_nginx, find_openssl
from service.settings import Settings, unix_socket_path

GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
NO_TLS = "none (NGINX_TLS=0)"


@dataclass
class State:
    gunicorn_pid: int
    nginx_pid: int
    http_port: int
    gunicorn_bind: str
    status_port: int
    graceful_timeout: int
    log_pids: list[int]
    https_port: int = 0  # 0: no TLS
    listen_address: str = LOOPBACK

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
            "gunicorn_log": "gunicorn.log",
            "nginx_log": "nginx.log",
            "gunicorn_pid": "gunicorn.pid",
        }
        if name not in files:
            raise AttributeError(name)
        return self.path / files[name]

    def load_state(self) -> State | None:
        try:
            return State(**json.loads(self.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None




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


def prepare(run: RunDir, config: Effective) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    run.metrics_dir.mkdir(exist_ok=True)
    run.env_file.write_text(config.env_file_text())
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


def pinned_paths(run: RunDir) -> dict[str, str]:
    """Values the local runtime owns: nginx's writable directory must be this stack's own."""
    return {"NGINX_RUN_DIR": str(run.nginx_dir.resolve())}


def process_env(run: RunDir, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        **(os.environ if environ is None else environ),
        "STACK_ENV_FILE": str(run.env_file),
        "PROMETHEUS_MULTIPROC_DIR": str(run.metrics_dir),
        "PYTHONUNBUFFERED": "1",
    }


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


def wait_healthy(
    url: str,
    processes: dict[str, subprocess.Popen[bytes]],
    logs: dict[str, Path],
    verify: ssl.SSLContext | bool = True,
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                tail = logs[name].read_text(errors="replace").strip().splitlines()[-5:]
                raise StackError(
                    f"{name} exited with {process.returncode} while starting: {' | '.join(tail)}"
                )
        try:
            if httpx2.get(f"{url}/healthz", timeout=2, verify=verify).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise StackError(f"{url}/healthz did not answer through nginx within 60 s; see `make logs`")


def up(run: RunDir, config: Effective, environ: Mapping[str, str] | None = None) -> State:
    """Start gunicorn and nginx; `environ` is the processes' environment (default: this one's)."""
    settings = config.settings
    state = run.load_state()
    if state and (alive(state.gunicorn_pid) or alive(state.nginx_pid)):
        raise AlreadyRunning(state.url, run.path)

    socket_path = unix_socket_path(settings.gunicorn_bind)
    public = tls.client_host(settings.nginx_listen_address)
    for knob, host, port in (
        ("HTTP_PORT", public, settings.listen_port),
        *[("HTTPS_PORT", public, settings.https_listen_port)] * settings.nginx_tls,
        *([("GUNICORN_BIND", *split_bind(settings.gunicorn_bind))] if socket_path is None else []),
        ("NGINX_STATUS_PORT", LOOPBACK, settings.nginx_status_port),
    ):
        if port_in_use(host, port):
            raise StackError(f"{knob}: port {port} is already in use by another process; choose a free one")
    if socket_path is not None:
        check_unix_bind(Path(socket_path))

    nginx = find_nginx()
    served = ensure_tls(settings)
    prepare(run, config)
    check_nginx(nginx, run)

    env = process_env(run, environ)
    gunicorn_log, nginx_log = rotating_log(run.gunicorn_log, config), rotating_log(run.nginx_log, config)
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--pid", str(run.gunicorn_pid)],
        cwd=ROOT,
        env=env,
        stdout=gunicorn_log.stdin,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    nginx_process = subprocess.Popen(
        [nginx, "-c", str(run.nginx_conf), "-e", "stderr", "-g", "daemon off;"],
        cwd=run.path,
        stdout=nginx_log.stdin,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    for pipe in (gunicorn_log, nginx_log):
        if pipe.stdin:
            pipe.stdin.close()  # the servers hold the write ends now; EOF when they exit
    state = State(
        gunicorn.pid,
        nginx_process.pid,
        settings.listen_port,
        settings.gunicorn_bind,
        settings.nginx_status_port,
        settings.gunicorn_graceful_timeout,
        [gunicorn_log.pid, nginx_log.pid],
        settings.https_listen_port if served else 0,
        settings.nginx_listen_address,
    )
    run.state.write_text(json.dumps(asdict(state)))
    try:
        wait_healthy(
            state.url,
            {"gunicorn": gunicorn, "nginx": nginx_process},
            {"gunicorn": run.gunicorn_log, "nginx": run.nginx_log},
            verification(served),
        )
    except StackError:
        down(run, quiet=True)
        raise
    print(f"stack is up (local runtime, {settings.workers} workers): {state.url}")
    for line in tls.trust_hint(served, state.url, state.plain_url) if served else []:
        print(line)
    return state


def down(run: RunDir, quiet: bool = False) -> None:
    state = run.load_state()
    if state is None:
        if not quiet:
            print(f"nothing to stop: no stack state in {run.path}")
        return
    grace = state.graceful_timeout + 5
    workers = descendants(state.gunicorn_pid) + descendants(state.nginx_pid)
    # QUIT: nginx stops accepting and finishes open requests. Its WebSocket tunnels only end when the app
    # closes them, so gunicorn gets TERM (graceful: in-flight requests finish, WebSockets close with 1012)
    # once nginx has exited or the app has no HTTP request left in flight, not after nginx's whole grace.
    signal_if_alive(state.nginx_pid, signal.SIGQUIT)
    deadline = time.monotonic() + grace
    while alive(state.nginx_pid) and time.monotonic() < deadline and app_requests_in_flight(state) > 0:
        time.sleep(0.2)
    signal_if_alive(state.gunicorn_pid, signal.SIGTERM)
    stop(state.nginx_pid, signal.SIGQUIT, max(1.0, deadline - time.monotonic()))
    stop(state.gunicorn_pid, signal.SIGTERM, grace)
    for child in workers:
        stop(child, signal.SIGTERM, 5)
    for pid in state.log_pids:  # they end by themselves at EOF, once nothing writes to their pipe
        stop(pid, signal.SIGTERM, 5, wait_first=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        port_in_use(state.host, state.http_port)
        or (state.https_port and port_in_use(state.host, state.https_port))
        or bind_in_use(state.gunicorn_bind)
    ):
        time.sleep(0.1)
    run.state.unlink(missing_ok=True)
    if not quiet:
        print(f"stopped the stack of {run.path} (gunicorn {state.gunicorn_pid}, nginx {state.nginx_pid})")


def app_requests_in_flight(state: State) -> float:
    """HTTP requests the app is serving now, besides the asking one (its /metrics, on the gunicorn bind)."""
    try:
        text = get_from_app(state.gunicorn_bind, "/metrics").text
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


def reload(run: RunDir, config: Effective) -> None:
    state = run.load_state()
    if state is None or not alive(state.gunicorn_pid):
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
    nginx = find_nginx()
    nginx_before = nginx_inputs(run, settings)
    served = ensure_tls(settings)
    old_workers = set(descendants(state.gunicorn_pid))
    prepare(run, config)
    check_nginx(nginx, run)
    nginx_changed = nginx_inputs(run, settings) != nginx_before
    os.kill(state.gunicorn_pid, signal.SIGHUP)
    if nginx_changed:
        # Only then: a reloading nginx closes idle client keep-alive connections, and a client that sent a
        # request on one at that moment gets no answer (nginx cannot avoid it; clients that retry hide it).
        os.kill(state.nginx_pid, signal.SIGHUP)
    deadline = time.monotonic() + settings.gunicorn_graceful_timeout + 10
    while time.monotonic() < deadline:
        current = set(descendants(state.gunicorn_pid))
        if not (current & old_workers) and len(current) >= settings.workers:
            break
        time.sleep(0.1)
    else:
        raise StackError("gunicorn did not replace its workers in time; see `make logs`")
    wait_healthy(state.url, {}, {}, verification(served))
    nginx_done = f"nginx re-read {run.nginx_conf}" if nginx_changed else "nginx unchanged (not reloaded)"
    print(f"reloaded: {settings.workers} new workers, {nginx_done}")


def ps(run: RunDir) -> None:
    state = run.load_state()
    if state is None:
        print(f"no stack in {run.path}")
        return
    print(f"{'PID':>7}  {'ROLE':<16} {'STATUS':<9} COMMAND")
    for role, pid in (("gunicorn master", state.gunicorn_pid), ("nginx master", state.nginx_pid)):
        rows = [(role, pid)] + [(f"  {role.split()[0]} worker", c) for c in descendants(pid)]
        for name, each in rows:
            try:
                process = psutil.Process(each)
                print(f"{each:>7}  {name:<16} {process.status():<9} {' '.join(process.cmdline())[:90]}")
            except psutil.NoSuchProcess:
                print(f"{each:>7}  {name:<16} {'gone':<9}")
    print(f"url: {state.url}   metrics/stub_status: http://{LOOPBACK}:{state.status_port}/metrics")


def logs(run: RunDir, follow: bool) -> None:
    files = [str(p) for p in (run.gunicorn_log, run.nginx_log) if p.exists()]
    if not files:
        print(f"no logs in {run.path}")
        return
    os.execvp("tail", ["tail", *(["-F"] if follow else []), "-n", "50", *files])
