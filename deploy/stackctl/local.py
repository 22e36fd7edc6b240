"""The local runtime: gunicorn and nginx as background processes of this host, managed by pid.

Everything a stack writes lives in one run directory (default `.run/local`): rendered configs, pid files,
logs, the Prometheus multiprocess directory and `state.json`, which records what `up` started so that
`down` stops exactly that and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx2
import psutil

from deploy.stackctl import tls
from deploy.stackctl.config import ROOT, Effective, installed_nginx, nginx_temp_dirs, render_nginx
from deploy.stackctl.ports import LOOPBACK, port_in_use
from service.settings import Settings

GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"
NGINX_PACKAGE = "nginx-light"
OPENSSL_PACKAGE = "openssl"
NO_TLS = "none (NGINX_TLS=0)"


class StackError(Exception):
    """A problem the user can fix; the message is one line that says how."""


class AlreadyRunning(StackError):
    def __init__(self, state: State, run: RunDir) -> None:
        super().__init__(
            f"stack already running at {state.url} (run dir {run.path}); `make down` first to restart it"
        )
        self.state = state


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
    liveness_path: str = "/healthz"  # APP_LIVENESS_PATH
    metrics_path: str = "/metrics"  # APP_METRICS_PATH

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


def alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def split_bind(bind: str) -> tuple[str, int]:
    host, port = bind.rsplit(":", 1)
    return (host or LOOPBACK).strip("[]"), int(port)


def find_nginx() -> str:
    return find_tool("nginx", NGINX_PACKAGE, installed_nginx())


def find_openssl() -> str:
    """The openssl command (TLS: the local CA, certificate dates), from the OS like nginx."""
    return find_tool("openssl", OPENSSL_PACKAGE, shutil.which("openssl"))


def find_wrk() -> str:
    """The HTTP load generator of the drills, the bench and the loss tests, from the OS like nginx."""
    return find_tool("wrk", "wrk", shutil.which("wrk"))


def find_tool(name: str, package: str, found: str | None) -> str:
    """`found`, else the OS package installed with apt-get when we are root, else the command to run."""
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"{name} not found: installing {package} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, env=env)
        if done.returncode == 0 and shutil.which(name):
            return str(shutil.which(name))
    if sys.platform == "darwin":
        raise StackError(f"{name} is not installed; install it with: brew install {name}")
    raise StackError(f"{name} is not installed; install it with: sudo apt-get install -y {package}")


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
            if httpx2.get(url, timeout=2, verify=verify).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise StackError(f"{url} did not answer through nginx within 60 s; see `make logs`")


def up(run: RunDir, config: Effective, environ: Mapping[str, str] | None = None) -> State:
    """Start gunicorn and nginx; `environ` is the processes' environment (default: this one's)."""
    settings = config.settings
    state = run.load_state()
    if state and (alive(state.gunicorn_pid) or alive(state.nginx_pid)):
        raise AlreadyRunning(state, run)

    bind_host, bind_port = split_bind(settings.gunicorn_bind)
    public = tls.client_host(settings.nginx_listen_address)
    for knob, host, port in (
        ("HTTP_PORT", public, settings.listen_port),
        *[("HTTPS_PORT", public, settings.https_listen_port)] * settings.nginx_tls,
        ("GUNICORN_BIND", bind_host, bind_port),
        ("NGINX_STATUS_PORT", LOOPBACK, settings.nginx_status_port),
    ):
        if port_in_use(host, port):
            raise StackError(f"{knob}: port {port} is already in use by another process; choose a free one")

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
        settings.app_liveness_path,
        settings.app_metrics_path,
    )
    run.state.write_text(json.dumps(asdict(state)))
    try:
        wait_healthy(
            f"{state.url}{state.liveness_path}",
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


def signal_if_alive(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop(pid: int, sig: signal.Signals, grace: float, wait_first: float = 0) -> None:
    """Send `sig` (after `wait_first` seconds for the process to end by itself), SIGKILL after `grace`."""
    if wait_for_exit(pid, wait_first):
        return
    signal_if_alive(pid, sig)
    if not wait_for_exit(pid, grace):
        signal_if_alive(pid, signal.SIGKILL)


def wait_for_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


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
    bind_host, bind_port = split_bind(state.gunicorn_bind)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        port_in_use(state.host, state.http_port)
        or (state.https_port and port_in_use(state.host, state.https_port))
        or port_in_use(bind_host, bind_port)
    ):
        time.sleep(0.1)
    run.state.unlink(missing_ok=True)
    if not quiet:
        print(f"stopped the stack of {run.path} (gunicorn {state.gunicorn_pid}, nginx {state.nginx_pid})")


def app_requests_in_flight(state: State) -> float:
    """HTTP requests the app is serving now, besides the asking one (its metrics, on the gunicorn bind)."""
    host, port = split_bind(state.gunicorn_bind)
    try:
        text = httpx2.get(f"http://{host}:{port}{state.metrics_path}", timeout=2).text
    except httpx2.HTTPError:
        return 0
    gauges = [line.split()[-1] for line in text.splitlines() if line.startswith("app_requests_in_flight ")]
    return float(gauges[0]) - 1 if gauges else 0


def descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


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
    state = replace(state, liveness_path=settings.app_liveness_path, metrics_path=settings.app_metrics_path)
    run.state.write_text(json.dumps(asdict(state)))
    wait_healthy(f"{state.url}{state.liveness_path}", {}, {}, verification(served))
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
