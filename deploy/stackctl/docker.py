"""The docker runtime: the stack as a compose project (docker-compose.yml) on a Docker engine.

Compose v2 (`docker compose`) when the plugin exists, else the standalone `docker-compose` (1.29 works).
The project name is COMPOSE_PROJECT_NAME (default `blueprint`), so several stacks can share an engine.
Knob values reach compose's `${NAME:-default}` interpolation through the environment: stackctl passes the
effective value of every knob (profile, `.env`, environment), validated before anything starts.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from deploy.pins import pinned_requirements
from deploy.stackctl import appenv, appimage, local, monitoring, preflight, requirements, tls
from deploy.stackctl.components import APP, NGINX, PROMETHEUS, REDIS, SERVICES, monitoring_on
from deploy.stackctl.config import KNOBS, ROOT, Effective
from deploy.stackctl.config import knob_environment as knob_environment
from deploy.stackctl.errors import StackError
from deploy.stackctl.facts import HostFacts
from deploy.stackctl.ports import LOOPBACK, port_in_use
from deploy.stackctl.runtime import Runtime
from service.settings import Settings, load_settings, unix_socket_path

COMPOSE_FILE = ROOT / "docker-compose.yml"
WHEELHOUSE = appenv.WHEELHOUSE
DEFAULT_PROJECT = "blueprint"
LOADTEST_PROFILE = ("--profile", "loadtest")  # Locust's web UI (`make loadtest-ui`)
MONITORING_PROFILE = ("--profile", "monitoring")  # Prometheus and nginx's exporter, with MONITORING=1
ALL_PROFILES = (*LOADTEST_PROFILE, *MONITORING_PROFILE)  # what down, ps and logs must see
MONITORING_SERVICES = ("prometheus", "nginx-exporter")
HEALTHY_WITHIN = 180.0
ROUTED_WITHIN = 30.0
# nginx's fail_timeout (the template keeps the default): a new app container is in Docker's DNS, and so in
# nginx's upstream, before it listens; the refused connect makes nginx skip it for this long.
NGINX_FAIL_TIMEOUT_S = 10.0
# Where the nginx image's entrypoint lists the app addresses nginx balances over (deploy/nginx/entrypoint.sh).
NGINX_ADDRESSES = "/tmp/nginx/upstream.addresses"
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"
# TLS: docker-compose.yml sets the nginx container's NGINX_HTTPS_LISTEN_PORT and NGINX_TLS_CERT/KEY to these;
# with NGINX_TLS=1 an overlay written next to the run dir's files publishes the port and mounts the files.
CONTAINER_HTTPS_PORT = 8443
CONTAINER_TLS_CERT = "/etc/blueprint/tls/cert.pem"
CONTAINER_TLS_KEY = "/etc/blueprint/tls/key.pem"
CONTAINER_TLS_CA = "/etc/blueprint/tls/ca.pem"
# What the compose Locust containers load with NGINX_TLS=1: nginx's HTTPS listener, by a name the generated
# certificate carries (the overlay's alias), verified against the local CA mounted at CONTAINER_TLS_CA.
LOCUST_TLS_HOST = f"https://{tls.CONTAINER_NAME}:{CONTAINER_HTTPS_PORT}"
LOCUST_PLAIN_HOST = "http://nginx:8080"  # docker-compose.yml's LOCUST_HOST
NGINX_UID = 101  # deploy/Dockerfile.nginx's USER: it must be able to read the key
TLS_OVERLAY = "compose.tls.yml"
# GUNICORN_BIND=unix:...: the app's socket on a volume nginx mounts too; one app container (see the file).
UNIX_OVERLAY = ROOT / "deploy" / "compose.unix.yml"


BASE_IMAGE_DOCKERFILES = {
    "NGINX_IMAGE": "Dockerfile.nginx",
    "PROMETHEUS_IMAGE": "Dockerfile.prometheus",
    "NGINX_EXPORTER_IMAGE": "Dockerfile.nginx-exporter",
    "REDIS_IMAGE": "Dockerfile.redis",
}


def default_build_arg(name: str) -> str:
    """A base image's default, from the Dockerfile that declares it (compose repeats it; a test checks)."""
    dockerfile = BASE_IMAGE_DOCKERFILES.get(name, "Dockerfile.app")
    text = (ROOT / "deploy" / dockerfile).read_text()
    found = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    if not found:
        raise StackError(f"deploy/{dockerfile} declares no default for {name}")
    return found.group(1)


def engine_reachable() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def compose_command() -> list[str]:
    if not shutil.which("docker"):
        raise StackError("the docker CLI is not installed; install Docker or use RUNTIME=local")
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=20)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise StackError(
        "neither `docker compose` (v2 plugin) nor `docker-compose` is installed; install one, "
        "e.g. apt-get install docker-compose-plugin (or docker-compose)"
    )


class Unavailable(StackError):
    """No Docker engine (or no compose) to run this here."""


class ComposeFailed(StackError):
    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


@dataclass
class Container:
    id: str
    name: str
    service: str
    status: str
    health: str
    exit_code: int
    config_hash: str = ""  # what compose compares to decide a container is out of date
    image: str = ""  # the image id it runs
    addresses: tuple[str, ...] = ()
    restarts: int = 0  # by its restart policy

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> Container:
        state = data["State"]
        labels = data["Config"]["Labels"]
        networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
        return cls(
            id=data["Id"][:12],
            name=data["Name"].lstrip("/"),
            service=labels.get("com.docker.compose.service", "?"),
            status=state["Status"],
            health=(state.get("Health") or {}).get("Status", "none"),
            exit_code=state.get("ExitCode", 0),
            config_hash=labels.get(CONFIG_HASH_LABEL, ""),
            image=data.get("Image", ""),
            addresses=tuple(n["IPAddress"] for n in networks.values() if n.get("IPAddress")),
            restarts=int(data.get("RestartCount") or 0),
        )


class Project:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.name = self.env.get("COMPOSE_PROJECT_NAME") or DEFAULT_PROJECT
        self.compose = compose_command()

    def command(self, *args: str, profiles: tuple[str, ...] = ()) -> list[str]:
        files = [arg for path in (COMPOSE_FILE, *self.overlays()) for arg in ("-f", str(path))]
        return [*self.compose, "-p", self.name, *files, *profiles, *args]

    def overlays(self) -> list[Path]:
        """Another app's image (APP_SRC, APP_REQUIREMENTS): the overlay `build` stages in the stack's run dir;
        with a unix bind, deploy/compose.unix.yml; with NGINX_TLS=1, the TLS overlay `up` wrote there."""
        app = self.app_overlay()
        found = [app] if app else []
        found += [UNIX_OVERLAY] if self.unix_bind() else []
        run_dir = appimage.run_dir_of(self.env)
        if self.env.get("NGINX_TLS") != "1" or run_dir is None:
            return found
        overlay = run_dir / TLS_OVERLAY
        return [*found, overlay] if overlay.is_file() else found

    def app_overlay(self) -> Path | None:
        return appimage.overlay_path(self.env, self.settings()) if self.env.get("NGINX_RUN_DIR") else None

    def app_image(self) -> str:
        return appimage.image(self.settings())

    def unix_bind(self) -> bool:
        return unix_socket_path(self.env.get("GUNICORN_BIND", "")) is not None

    def settings(self) -> Settings:
        return load_settings(**{KNOBS[name]: value for name, value in self.env.items() if name in KNOBS})

    def verification(self) -> ssl.SSLContext | bool:
        """How this host verifies the stack's HTTPS (see tls.client_context)."""
        tls_on = self.env.get("NGINX_TLS") == "1"
        return local.verification(tls.files(self.settings()) if tls_on else None)

    def run(
        self, *args: str, profiles: tuple[str, ...] = (), capture: bool = False
    ) -> subprocess.CompletedProcess[str]:
        command = self.command(*args, profiles=profiles)
        result = subprocess.run(command, cwd=ROOT, env=self.env, text=True, capture_output=capture)
        if result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()[-1:] if capture else ["see the output above"]
            raise ComposeFailed(
                f"`{' '.join(command[len(self.compose) :])}` failed: {' '.join(detail)}", result.stderr or ""
            )
        return result

    def containers(self, service: str | None = None) -> list[Container]:
        listed = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}"],
            env=self.env,
            capture_output=True,
            text=True,
        )
        ids = listed.stdout.split()
        if listed.returncode != 0 or not ids:
            return []
        inspected = subprocess.run(["docker", "inspect", *ids], env=self.env, capture_output=True, text=True)
        if inspected.returncode != 0:  # a container went away between the two calls; callers poll again
            return []
        found = [Container.from_inspect(each) for each in json.loads(inspected.stdout)]
        return sorted((c for c in found if service in (None, c.service)), key=lambda c: (c.service, c.name))

    def running(self, service: str) -> list[Container]:
        return [c for c in self.containers(service) if c.status == "running"]

    def url(self) -> str:
        if self.env.get("NGINX_TLS") == "1":
            return f"https://{LOOPBACK}:{self.env.get('HTTPS_PORT', '8443')}"
        return self.plain_url()

    def plain_url(self) -> str:
        return f"http://{LOOPBACK}:{self.env.get('HTTP_PORT', '8080')}"


def build_wheelhouse(env: dict[str, str]) -> Path:
    """Wheels for the image's Python (asked from the image itself) in ./wheelhouse, for OFFLINE=1 builds:
    the demo's and Locust's pins, and with APP_REQUIREMENTS the platform's pins with the app's."""
    image = env.get("PYTHON_IMAGE") or default_build_arg("PYTHON_IMAGE")
    probe = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
         "import sys, platform; print(sys.version_info[0], sys.version_info[1], platform.machine(), "
         "platform.libc_ver()[1] or 'musl')"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackError(f"PYTHON_IMAGE={image}: cannot run its python3 to learn its version: {last}")
    major, minor, machine, libc = probe.stdout.split()
    if libc == "musl":
        platforms = [f"musllinux_1_{n}_{machine}" for n in (2, 1)]
    else:
        glibc_minor = int(libc.split(".")[1])
        platforms = [f"manylinux_2_{n}_{machine}" for n in range(glibc_minor, 16, -1)]
        platforms += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    target = [
        *("--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "cp"),
        *("--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"),
        *(arg for platform in platforms for arg in ("--platform", platform)),
    ]
    said = f"Python {major}.{minor} ({machine}, {libc})"
    download_wheels(pinned_requirements(["demo", "loadtest"]), None, target, said)
    settings = load_settings(**{KNOBS[name]: value for name, value in env.items() if name in KNOBS})
    if settings.app_requirements:
        download_wheels(requirements.platform_pins(), Path(settings.app_requirements), target, said)
    return WHEELHOUSE


def own_services(settings: Settings) -> list[str]:
    """`--scale redis=0` when the stack runs no Redis of its own (REDIS_URL names one, or another
    APP_MODULE than the demo: components.redis_wanted)."""
    return [] if REDIS.wanted(settings) else ["--scale", f"{REDIS.service}=0"]


def profiles(settings: Settings) -> tuple[str, ...]:
    """The compose profiles a stack with these knobs runs besides its default services."""
    return MONITORING_PROFILE if monitoring_on(settings) else ()


def host_wheelhouse(settings: Settings) -> Path:
    """Wheels for this host's Python in ./wheelhouse (the local runtime's OFFLINE=1): the platform's pins
    with the app's requirements, or with the demo's."""
    said = f"this host's Python {sys.version_info[0]}.{sys.version_info[1]}"
    if settings.app_requirements:
        download_wheels(requirements.platform_pins(), Path(settings.app_requirements), [], said)
    else:
        download_wheels(pinned_requirements(["demo"]), None, [], said)
    return WHEELHOUSE


def download_wheels(pins: list[str], app_file: Path | None, target: list[str], said: str) -> None:
    """`pip download` of `pins` and the requirements file `app_file` into ./wheelhouse for the Python that
    `target` describes (nothing: this one), once per content (a stamp file); a conflict in one line."""
    digest = requirements.digest(app_file, pins, *target)
    stamp = WHEELHOUSE / f".complete-{digest}"
    if stamp.exists():
        return
    WHEELHOUSE.mkdir(exist_ok=True)
    pins_file = WHEELHOUSE / ("requirements.txt" if app_file is None else f"platform-{digest}.txt")
    pins_file.write_text("\n".join(pins) + "\n")
    what = f"the platform's pins and {app_file}" if app_file else "the pinned requirements"
    print(f"wheelhouse: downloading {what} for {said} ...", flush=True)
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", *target,
         "-d", str(WHEELHOUSE), "-r", str(pins_file), *(["-r", str(app_file)] if app_file else [])],
        capture_output=True, text=True,
    )  # fmt: skip
    if download.returncode != 0:
        output = download.stdout + download.stderr
        if app_file is not None:
            raise StackError(app_pip_failure(output, str(pins_file), str(app_file), app_file, pins))
        errors = [line for line in download.stderr.splitlines() if line.startswith("ERROR")] or ["?"]
        raise StackError(f"wheelhouse: pip download failed: {errors[-1]}")
    stamp.touch()


def app_pip_failure(output: str, pins_path: str, app_path: str, app_file: Path, pins: list[str]) -> str:
    """pip's failure over the platform's pins (`pins_path` as pip was given it) and the app's requirements
    (`app_path`; its lines read from `app_file`), in one line naming APP_REQUIREMENTS."""
    sources = {
        pins_path: requirements.Source(pins_path, pins, platform=True),
        app_path: requirements.Source(app_path, app_file.read_text(errors="replace").splitlines(), False),
    }
    return requirements.failure_line(output, f"APP_REQUIREMENTS={app_file}", sources, pins)


def build(
    project: Project, loadtest: bool = False, services: tuple[str, ...] = (), every: bool = False
) -> None:
    """`compose build` (of `services`, default those the knobs run: MONITORING=1 adds Prometheus's and the
    exporter's, `loadtest` Locust's, `every` all of them, for `make images`), its output shown as it comes.
    Another app's image is built from a context staged first (appimage.py); pip's failure in it is said in
    one line."""
    offline = project.env.get("OFFLINE") == "1"
    if offline:
        build_wheelhouse(project.env)
    settings = project.settings()
    if appimage.own_app(settings):
        run_dir = appimage.run_dir_of(project.env)
        if run_dir is None:
            raise StackError("NGINX_RUN_DIR is not set: no run dir to stage the app's build context in")
        appimage.stage(run_dir, settings, offline)
    wanted = ALL_PROFILES if every else (*LOADTEST_PROFILE * loadtest, *profiles(settings))
    command = project.command("build", *services, profiles=wanted)
    code, output = streamed(command, project.env)
    if code == 0:
        return
    pip_failed = "ResolutionImpossible" in output or "No matching distribution" in output
    if settings.app_requirements and pip_failed:
        app_file = Path(settings.app_requirements)
        pins = requirements.platform_pins()
        raise StackError(
            app_pip_failure(output, appimage.IMAGE_PINS, appimage.IMAGE_REQUIREMENTS, app_file, pins)
        )
    last = [line for line in output.splitlines() if line.strip()][-1:] or [f"exit {code}"]
    raise ComposeFailed(f"`{' '.join(command[len(project.compose) :])}` failed: {last[0]}", output)


def streamed(command: list[str], env: Mapping[str, str], keep: int = 400) -> tuple[int, str]:
    """Run `command` with its output copied to this process's stdout; its exit code and last `keep` lines."""
    tail: collections.deque[str] = collections.deque(maxlen=keep)
    with subprocess.Popen(
        command, cwd=ROOT, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout or ():
            sys.stdout.write(line)
            tail.append(line)
    sys.stdout.flush()
    return process.returncode, "".join(tail)


def wait_healthy(project: Project, within: float = HEALTHY_WITHIN) -> None:
    deadline = time.monotonic() + within
    waiting: list[Container] = []
    while time.monotonic() < deadline:
        containers = project.containers()
        broken = [c for c in containers if c.status in ("exited", "dead") and c.service in SERVICES]
        halted = app_halted(project) if broken or any(c.restarts for c in containers) else None
        if halted:
            raise StackError(halted)
        if broken:
            first = broken[0]
            raise StackError(f"{first.name} exited with {first.exit_code}: {last_log(project, first)}")
        waiting = [c for c in containers if c.status != "running" or c.health not in ("healthy", "none")]
        liveness = f"{project.url()}{project.settings().app_liveness_path}"
        if containers and not waiting and answers(liveness, project.verification()):
            return
        time.sleep(0.5)
    names = ", ".join(f"{c.name} ({c.health})" for c in waiting) or "nginx's public port"
    raise StackError(f"not healthy within {within:.0f} s: {names}; see `make logs`")


def answers(url: str, verify: ssl.SSLContext | bool = True) -> bool:
    try:
        return httpx2.get(url, timeout=2, verify=verify).status_code == 200
    except httpx2.HTTPError:
        return False


def last_log(project: Project, container: Container) -> str:
    logs = subprocess.run(
        ["docker", "logs", "--tail", "3", container.id], env=project.env, capture_output=True, text=True
    )
    return " | ".join((logs.stdout + logs.stderr).strip().splitlines()[-3:]) or "no log output"


def up(config: Effective, environ: Mapping[str, str] | None, run_dir: Path) -> Project:
    settings = config.settings
    served = local.ensure_tls(settings)
    if served:
        write_tls_overlay(settings, served)
    project = Project(knob_environment(config, environ))
    published = [("HTTP_PORT", settings.http_port), *[("HTTPS_PORT", settings.https_port)] * bool(served)]
    monitored = [("PROMETHEUS_PORT", settings.prometheus_port)] * settings.monitoring
    for knob, port in [
        *(published if not project.running(NGINX.service) else []),
        *(monitored if not project.running(PROMETHEUS.service) else []),
    ]:
        if port_in_use(LOOPBACK, port):
            raise StackError(f"{knob}: port {port} is already in use by another process; choose a free one")
    build(project)
    print(check_image(project, config, run_dir))
    apps = project.running(APP.service)
    replicas = max(1, len(apps))  # `make up` keeps a `make scale`
    if project.unix_bind() and replicas > 1:
        raise StackError(one_socket_one_app(replicas))
    if apps and project.running(NGINX.service) and out_of_date(project, apps) and not project.unix_bind():
        replace_start_first(project, apps)  # with a unix bind compose recreates it stop-first
    if not settings.monitoring and any(project.containers(name) for name in MONITORING_SERVICES):
        project.run(
            "rm", "--stop", "--force", *MONITORING_SERVICES, profiles=MONITORING_PROFILE, capture=True
        )
    start(
        project,
        "up",
        "-d",
        "--remove-orphans",
        "--scale",
        f"{APP.service}={replicas}",
        *own_services(settings),
        profiles=profiles(settings),
    )
    wait_healthy(project)
    print(f"stack is up (docker runtime, project {project.name}, app x{replicas}): {project.url()}")
    for line in tls.trust_hint(served, project.url(), project.plain_url()) if served else []:
        print(line)
    if settings.monitoring:
        print(monitoring.announce(monitoring.url(settings)))
    return project


def image_where(project: Project, config: Effective) -> preflight.Where:
    """The built app image, as the pre-flight and the validators run it."""
    return preflight.in_image(project.app_image(), config, project.env)


def check_image(project: Project, config: Effective, run_dir: Path) -> str:
    """The pre-flight in the built app image: APP_MODULE loaded and started there (preflight.py)."""
    return preflight.check_app(image_where(project, config), config, run_dir / preflight.LOG)


def built_app_where(run_dir: Path, config: Effective, environ: Mapping[str, str]) -> preflight.Where:
    """The app image built (only it) for the pre-flight of `make check`."""
    if not engine_reachable():
        raise Unavailable("no Docker engine reachable to build the app image in (start one, or DOCKER_HOST)")
    project = Project(knob_environment(config, environ))
    print("building the app image for the pre-flight ...", flush=True)
    build(project, services=(APP.service,))
    return image_where(project, config)


def write_tls_overlay(settings: Settings, served: tls.Files) -> Path:
    """The compose overlay for NGINX_TLS=1: HTTPS_PORT published beside HTTP_PORT, the certificate and key
    mounted read-only where the container's NGINX_TLS_CERT/KEY point. With a generated certificate, the
    Locust containers (profile loadtest) target LOCUST_TLS_HOST and trust the local CA, mounted read-only."""
    container_readable(served)
    mounts = ((served.cert, CONTAINER_TLS_CERT), (served.key, CONTAINER_TLS_KEY))
    nginx: dict[str, Any] = {
        "ports": [f"{settings.compose_publish_address}:{settings.https_port}:{CONTAINER_HTTPS_PORT}"],
        "volumes": [read_only(source, target) for source, target in mounts],
    }
    services: dict[str, Any] = {NGINX.service: nginx}
    if served.ca is not None:
        nginx["networks"] = {"default": {"aliases": [tls.CONTAINER_NAME]}}
        locust = {
            "environment": {
                "LOCUST_HOST": LOCUST_TLS_HOST,
                "SSL_CERT_FILE": CONTAINER_TLS_CA,
                "REQUESTS_CA_BUNDLE": CONTAINER_TLS_CA,
            },
            "volumes": [read_only(served.ca, CONTAINER_TLS_CA)],
        }
        services.update({"locust-master": locust, "locust-worker": locust})
    overlay = Path(settings.nginx_run_dir).parent / TLS_OVERLAY
    overlay.parent.mkdir(parents=True, exist_ok=True)
    header = "# written by `make up` (deploy/stackctl/docker.py) for NGINX_TLS=1, over docker-compose.yml\n"
    overlay.write_text(header + json.dumps({"services": services}, indent=2) + "\n")
    return overlay


def read_only(source: Path, target: str) -> dict[str, Any]:
    return {"type": "bind", "source": str(source), "target": target, "read_only": True}


def container_readable(served: tls.Files) -> None:
    """nginx runs as uid 101 in its container and reads the mounted files itself. A generated key is made
    readable to it (group 101 when we are root, else everyone: it serves only localhost); a given one that
    it cannot read is refused, naming the knob."""
    for knob, path in (("NGINX_TLS_CERT", served.cert), ("NGINX_TLS_KEY", served.key)):
        status = path.stat()
        mode = status.st_mode
        if status.st_uid == NGINX_UID or mode & 0o004 or (status.st_gid == NGINX_UID and mode & 0o040):
            continue
        if not served.generated:
            raise StackError(
                f"{knob}={path}: the nginx container (uid {NGINX_UID}) cannot read it; e.g. "
                f"`chgrp {NGINX_UID} {path} && chmod g+r {path}`"
            )
        if os.geteuid() == 0:
            os.chown(path, -1, NGINX_UID)
            path.chmod(0o640)
        else:
            path.chmod(0o644)
            print(f"made {path} readable to all: the nginx container (uid {NGINX_UID}) must read it")


def start(project: Project, *args: str, profiles: tuple[str, ...] = ()) -> None:
    """`compose up`, with the one start failure that needs explaining translated into a knob."""
    try:
        result = project.run(*args, profiles=profiles, capture=True)
    except ComposeFailed as error:
        if "rlimit type 7" in error.output:  # RLIMIT_NOFILE
            nofile = project.env.get("COMPOSE_NOFILE", "16384")
            raise StackError(
                f"COMPOSE_NOFILE={nofile}: the Docker engine may not raise the open-file limit that high "
                "(its own hard limit is lower and it lacks CAP_SYS_RESOURCE); set COMPOSE_NOFILE to at most "
                "the engine's `ulimit -Hn`"
            ) from None
        halted = app_halted(project)
        if halted:
            raise StackError(halted) from None
        raise
    sys.stderr.write(result.stderr)


def app_halted(project: Project) -> str | None:
    """When an app container's gunicorn halted on a worker that could not load or start the app (exit 3 or
    4, after the pre-flight passed: a failure under gunicorn only), the worker's own `APP_MODULE=...` line;
    the container is stopped rather than restarted again and again (its log stays for `make logs`)."""
    for container in project.containers(APP.service):
        if container.status == "running" and not container.restarts:
            continue
        logs = subprocess.run(
            ["docker", "logs", container.id], env=project.env, capture_output=True, text=True
        )
        said = preflight.halted_line(logs.stdout + logs.stderr)
        if said is None:
            continue
        for step in (["update", "--restart", "no"], ["stop", "--time", "5"]):
            subprocess.run(["docker", *step, container.id], env=project.env, capture_output=True)
        return f"{said} (gunicorn halted in {container.name}; see `make logs`)"
    return None


def down(project: Project | None = None) -> None:
    project = project or Project()
    if not project.containers():
        print(f"nothing to stop: no containers of compose project {project.name}")
        return
    project.run("down", "--remove-orphans", profiles=ALL_PROFILES)
    print(f"stopped and removed compose project {project.name}")


def require_running(project: Project) -> list[Container]:
    apps = project.running(APP.service)
    if not apps or not project.running(NGINX.service):
        raise StackError(f"compose project {project.name} is not running; start it with `make up`")
    return apps


def reload(config: Effective, environ: Mapping[str, str] | None = None) -> None:
    project = Project(knob_environment(config, environ))
    apps = require_running(project)
    project.run("kill", "-s", "HUP", APP.service)
    # nginx is left alone: its container's settings cannot change without a recreate, its entrypoint follows
    # the app's addresses by itself, and a reloading nginx closes idle client keep-alive connections.
    wait_healthy(project)
    print(
        f"reloaded: gunicorn HUP in {len(apps)} app container(s) (new workers, in-flight requests finish). "
        "Changed knobs need `make up`: it replaces out-of-date app containers start-first (new ones "
        "healthy and balanced over before the old ones drain) and lets compose recreate nginx if its own "
        "settings changed."
    )


def scale(config: Effective, replicas: int, project: Project | None = None) -> None:
    """`make scale`: compose adds or stops-and-removes app containers (each stop drains, see the worker);
    returns once nginx balances over exactly the running ones and has sent requests to each added one.
    nginx follows the app's addresses by itself (its image's entrypoint), so it is not reloaded: a reload
    closes idle client keep-alive connections."""
    if replicas < 1:
        raise StackError(f"APP={replicas}: the number of app containers must be at least 1")
    project = project or Project(knob_environment(config))
    if project.unix_bind() and replicas > 1:
        raise StackError(one_socket_one_app(replicas))
    before = {c.id for c in require_running(project)}
    started = time.monotonic()
    start(
        project,
        *("up", "-d", "--no-recreate", "--no-build", "--scale", f"{APP.service}={replicas}"),
        *own_services(config.settings),
    )
    wait_healthy(project)
    apps = project.running(APP.service)
    wait_routed(project, apps)
    added = [c for c in apps if c.id not in before]
    if added:
        wait_answering(project, added, since=started)
    print(f"{replicas} app container(s) behind nginx: {project.url()}")


def one_socket_one_app(replicas: int) -> str:
    return (
        f"APP={replicas} with a unix GUNICORN_BIND: every app container would bind the one socket path "
        "nginx connects to (deploy/compose.unix.yml); scale with a host:port bind"
    )


def out_of_date(project: Project, apps: list[Container]) -> bool:
    """Whether compose would recreate these app containers: another config hash (compose v1 hashes the
    image id in, v2 does not) or another image than the one `build` just tagged."""
    hashed = project.run("config", "--hash", APP.service, capture=True).stdout.split()
    current = hashed[-1] if hashed else ""
    image = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", project.app_image()],
        env=project.env, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return any(c.config_hash != current or (image and c.image != image) for c in apps)


def replace_start_first(project: Project, old: list[Container]) -> None:
    """Replaces out-of-date app containers without a moment in which nothing serves: as many new ones are
    created beside them (`--no-recreate` keeps the old ones; compose v1 and v2 both create the added
    replicas from the current config), and once they are healthy and nginx balances over them, the old ones
    are stopped (TERM: each drains, within its stop_grace_period) and removed. Compose alone would stop the
    only app container before starting its successor: every request in between is a 502."""
    started = time.monotonic()
    count = len(old)
    doubled = f"{APP.service}={2 * count}"
    start(project, "up", "-d", "--no-deps", "--no-recreate", "--no-build", "--scale", doubled, APP.service)
    retired = {c.id for c in old}
    try:
        wait_healthy(project)
        successors = [c for c in project.running(APP.service) if c.id not in retired]
        wait_routed(project, successors, exactly=False)
        wait_answering(project, successors, since=started)
    except StackError as error:
        added = [c.id for c in project.containers(APP.service) if c.id not in retired]
        if added:
            subprocess.run(["docker", "rm", "-f", *added], env=project.env, capture_output=True)
        wait_routed(project, old)
        raise StackError(f"{error}; removed the new app container(s), the old ones still serve") from None
    ids = [c.id for c in old]
    for step in (["stop"], ["rm", "-f"]):
        done = subprocess.run(["docker", *step, *ids], env=project.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"docker {step[0]} of the old app containers failed: {done.stderr.strip()}")
    wait_routed(project, successors)
    print(
        f"replaced {count} app container(s) start-first in {time.monotonic() - started:.1f} s: "
        f"{', '.join(c.name for c in old)} -> {', '.join(c.name for c in successors)}"
    )


def routed(project: Project) -> set[str] | None:
    """The app addresses nginx balances over now, as its entrypoint lists them (None: not readable)."""
    nginx = project.running(NGINX.service)
    if not nginx:
        return None
    listed = subprocess.run(
        ["docker", "exec", nginx[0].id, "cat", NGINX_ADDRESSES],
        env=project.env,
        capture_output=True,
        text=True,
    )
    return set(listed.stdout.split()) if listed.returncode == 0 else None


def wait_answering(
    project: Project, apps: list[Container], since: float, within: float = ROUTED_WITHIN
) -> None:
    """Until requests through nginx have reached each of these containers, and nginx's fail_timeout has
    passed since they were created: a container nginx skips after its boot-time refusal would leave nginx
    with no live server once the old ones go."""
    waiting = {c.id for c in apps}  # a container's hostname is its short id
    # The platform's readiness names the host that answered, whatever the app (the probes answer first).
    readiness = f"{project.url()}{project.settings().app_readiness_path}"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            info = httpx2.get(readiness, timeout=2, verify=project.verification())
            waiting.discard(info.json().get("host", "") if info.status_code == 200 else "")
        except (httpx2.HTTPError, ValueError):
            pass
        if not waiting and time.monotonic() - since >= NGINX_FAIL_TIMEOUT_S:
            return
        time.sleep(0.1)
    raise StackError(
        f"no request through nginx reached app container(s) {sorted(waiting)} within {within:.0f} s"
    )


def wait_routed(
    project: Project, apps: list[Container], exactly: bool = True, within: float = ROUTED_WITHIN
) -> None:
    """Until nginx balances over these app containers (and, `exactly`, over no other address)."""
    wanted = {address for c in apps for address in c.addresses}
    deadline = time.monotonic() + within
    seen: set[str] | None = None
    while time.monotonic() < deadline:
        seen = routed(project)
        if seen is not None and (seen == wanted if exactly else wanted <= seen):
            return
        time.sleep(0.25)
    raise StackError(
        f"nginx did not balance over the app containers' addresses {sorted(wanted)} within {within:.0f} s "
        f"(it lists {sorted(seen) if seen is not None else 'nothing'} in {NGINX_ADDRESSES}); see `make logs`"
    )


def ps(project: Project | None = None) -> None:
    project = project or Project()
    project.run("ps", profiles=ALL_PROFILES)


def logs(follow: bool, project: Project | None = None) -> None:
    project = project or Project()
    command = project.command("logs", "--tail", "50", *(["-f"] if follow else []), profiles=ALL_PROFILES)
    os.execvpe(command[0], command, project.env)


def locust_target(settings: Settings) -> str:
    """Where the compose Locust containers send their load: nginx's plain port, or with NGINX_TLS=1 its
    HTTPS port by the name the generated certificate gives the nginx container, verified against the local
    CA (write_tls_overlay). Raises StackError for a certificate of your own (NGINX_TLS_CERT): the
    containers could verify it under no name we know."""
    if not settings.nginx_tls:
        return LOCUST_PLAIN_HOST
    served = tls.files(settings)
    if not served.generated:
        raise StackError(
            f"NGINX_TLS_CERT={served.cert}: the compose Locust UI verifies nginx as {tls.CONTAINER_NAME} "
            "against the generated local CA, and a certificate of your own names other hosts; run Locust on "
            "this host instead: `make loadtest HOST=https://<a name it carries>:<HTTPS_PORT>`"
        )
    return LOCUST_TLS_HOST


def locust_web_ui(config: Effective, environ: Mapping[str, str], workers: int, web_port: int) -> None:
    """Locust's web UI as the compose profile `loadtest` (master + workers), in the foreground until
    Ctrl-C, against the stack's own knobs and `locust_target`."""
    target = locust_target(config.settings)
    print(
        f"Locust web UI: http://{LOOPBACK}:{web_port}  (target {target} on the compose network; "
        "compose profile loadtest; Ctrl-C stops)",
        flush=True,
    )
    base = {**environ, "LOCUST_WEB_PORT": str(web_port)}
    project = Project({**knob_environment(config, base), "LOCUST_WEB_PORT": str(web_port)})
    build(project, loadtest=True)
    scale = f"locust-worker={max(workers, 1)}"
    project.run("up", "--scale", scale, "locust-master", "locust-worker", profiles=ALL_PROFILES)


class Docker(Runtime):
    """The stack as the compose project COMPOSE_PROJECT_NAME on the engine behind DOCKER_HOST."""

    compose_project = True
    serves_locust_ui = True
    unavailable = "no Docker engine reachable (`docker info` failed); start one or set DOCKER_HOST"

    def up(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        up(config, environ, run_dir)

    def reload(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        reload(config, environ)

    def scale(self, run_dir: Path, config: Effective, environ: Mapping[str, str], replicas: int) -> None:
        scale(config, replicas, Project(knob_environment(config, environ)))

    def down(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        down(Project(environ))

    def ps(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        ps(Project(environ))

    def logs(self, run_dir: Path, environ: Mapping[str, str], follow: bool) -> None:
        logs(follow, Project(environ))

    def port_knobs(self) -> tuple[str, ...]:
        return ("HTTP_PORT", "HTTPS_PORT", "LOCUST_WEB_PORT", "PROMETHEUS_PORT")

    def app_where(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> preflight.Where:
        return built_app_where(run_dir, config, environ)

    def preflight(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> str:
        where = self.app_where(run_dir, config, environ)
        return preflight.check_app(where, config, run_dir / preflight.LOG)

    def stop_service(self, run_dir: Path, environ: Mapping[str, str], service: str) -> None:
        Project(environ).run("stop", service, capture=True)

    def start_service(
        self, run_dir: Path, config: Effective, environ: Mapping[str, str], service: str
    ) -> None:
        project = Project(environ)
        project.run("start", service, capture=True)
        wait_healthy(project)

    def available(self) -> bool:
        return engine_reachable()

    def host_facts(self, settings: Settings) -> HostFacts:
        return HostFacts.docker(settings)

    def locust_ui(self, config: Effective, environ: Mapping[str, str], workers: int, web_port: int) -> None:
        locust_web_ui(config, environ, workers, web_port)

    def container_filters(self, project: str, service: str) -> list[str]:
        return [
            *("--filter", f"label=com.docker.compose.project={project}"),
            *("--filter", f"label=com.docker.compose.service={service}"),
        ]

    def containers(self, environ: Mapping[str, str], service: str | None = None) -> list[Container]:
        project = Project(environ)
        return project.running(service) if service else project.containers()
