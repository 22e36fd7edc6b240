"""The swarm runtime: docker-compose.yml plus deploy/swarm.yml as a `docker stack` on a Docker swarm.

`docker stack deploy` cannot read docker-compose.yml as it is (it refuses `depends_on` conditions and
`profiles`) and silently ignores some of it (`tmpfs:`), so the stack file is rendered: compose merges and
interpolates both files (`config`), then `stack_file` drops or converts what a stack cannot use (DROPPED,
CONVERTED), points every service at its built image — tagged with the image's content id, so a new build
is a new spec and a rolling update — and places nginx by SWARM_NGINX_CONSTRAINT. The result is written to
`<run dir>/stack.yml` and deployed. The stack's name is COMPOSE_PROJECT_NAME (default `blueprint`).

On this kind of engine (no iptables) a service's virtual IP and routing-mesh ports do not answer: every
service is `endpoint_mode: dnsrr`, nginx balances over `tasks.app` itself and publishes in host mode.
With NGINX_TLS=1 the certificate and key reach nginx as a swarm config and a swarm secret (`with_tls`).
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import yaml  # type: ignore[import-untyped]  # PyYAML comes with uvicorn[standard]

from deploy.stackctl import docker, local, monitoring, preflight, tls
from deploy.stackctl.components import APP, NGINX, REDIS
from deploy.stackctl.config import KNOBS, ROOT, Effective, dump
from deploy.stackctl.errors import StackError
from deploy.stackctl.facts import HostFacts
from deploy.stackctl.ports import LOOPBACK, port_in_use
from deploy.stackctl.runtime import Runtime
from deploy.stackctl.validation import Validation, ValidationStatus
from service.settings import Settings

SWARM_FILE = ROOT / "deploy" / "swarm.yml"
STACK_FILE = "stack.yml"
LOCUST_SERVICES = ("locust-master", "locust-worker")
# Services whose compose ports a stack does not publish: the Locust web UI and Prometheus have no login, and
# swarm binds a published port on every address of a node, never on loopback alone.
UNPUBLISHED = ("locust-master", "prometheus")
ADVERTISE_ADDRESS = "127.0.0.1"
CONVERGE_WITHIN = 240.0
FAILED_TASKS = 3  # new failed tasks of one service before a wait gives up
PENDING_FOR = 15.0  # seconds a task may wait for a node before a wait gives up
NGINX_RUN_DIR = "/tmp/nginx"  # docker-compose.yml's, inside the nginx container

# Keys of docker-compose.yml that `docker stack deploy` refuses or ignores, and what stands in for each.
DROPPED = {
    "build": "stackctl builds and tags the images (and pushes them to SWARM_REGISTRY)",
    "depends_on": "no start order in swarm: nginx waits until tasks.app resolves (a healthy app task)",
    "profiles": "the Locust services are in the stack when SWARM_LOCUST_WORKERS > 0, Prometheus and the "
    "exporter when MONITORING=1",
    "restart": "deploy.restart_policy of deploy/swarm.yml",
    "security_opt": "nothing: no-new-privileges is not applied (the `swarm hardening` warning)",
    "expose": "nothing needed: tasks on the overlay network reach each other on any port",
}
CONVERTED = {
    "tmpfs": "tmpfs mounts (swarm ignores the short form without a word)",
    "ports": "the host-mode ports of deploy/swarm.yml replace the base file's for the same target",
}
PROGRESSING = ("updating", "rollback_started")
FAILED_UPDATE = ("paused", "rollback_paused", "rollback_completed")


def run(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise StackError(f"`docker {' '.join(args[:3])}` failed: {last}")
    return result.stdout


@dataclass(frozen=True)
class Task:
    id: str
    name: str  # app.1, nginx.<node id>: the service's short name and the slot (or node)
    service: str  # short name: app, nginx, ...
    state: str  # running, starting, failed, ... (the first word of CurrentState, lower case)
    desired: str
    error: str
    node: str  # the hostname of the node it was placed on ("" while pending)
    ports: str = ""  # as `docker stack ps` shows them: one entry per address the port is bound on


@dataclass(frozen=True)
class Service:
    name: str  # short name
    global_mode: bool
    replicas: int  # replicated mode only
    update_state: str
    update_message: str
    update_started: str
    template: str  # the task template as JSON: equal before and after a deploy = the tasks were kept
    image: str  # as deployed, without a pinned digest


class Stack:
    """One stack on the engine behind DOCKER_HOST (a swarm manager)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.name = self.env.get("COMPOSE_PROJECT_NAME") or docker.DEFAULT_PROJECT

    def docker(self, *args: str, timeout: float = 120) -> str:
        return run(*args, env=self.env, timeout=timeout)

    def full_name(self, service: str) -> str:
        return f"{self.name}_{service}"

    def short_name(self, full: str) -> str:
        return full.removeprefix(f"{self.name}_")

    def label(self) -> str:
        return f"label=com.docker.stack.namespace={self.name}"

    def services(self) -> dict[str, Service]:
        ids = self.docker("service", "ls", "-q", "--filter", self.label()).split()
        if not ids:
            return {}
        found = {}
        for data in json.loads(self.docker("service", "inspect", *ids)):
            mode = data["Spec"]["Mode"]
            update = data.get("UpdateStatus") or {}
            name = self.short_name(data["Spec"]["Name"])
            found[name] = Service(
                name=name,
                global_mode="Global" in mode,
                replicas=int((mode.get("Replicated") or {}).get("Replicas", 0)),
                update_state=update.get("State", ""),
                update_message=update.get("Message", ""),
                update_started=update.get("StartedAt", ""),
                template=json.dumps(data["Spec"]["TaskTemplate"], sort_keys=True),
                image=data["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0],
            )
        return found

    def tasks(self) -> list[Task]:
        """Every task of the stack, the shut down and failed ones of its history too, newest first."""
        command = ["docker", "stack", "ps", self.name, "--no-trunc", "--format", "{{json .}}"]
        listed = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if listed.returncode != 0 and "nothing found in stack" not in listed.stderr.lower():
            last = (listed.stderr.strip().splitlines() or [f"exit {listed.returncode}"])[-1]
            raise StackError(f"`docker stack ps {self.name}` failed: {last}")
        tasks = []
        for line in listed.stdout.splitlines():
            data = json.loads(line)
            tasks.append(
                Task(
                    id=data["ID"],
                    name=self.short_name(data["Name"]),
                    service=self.short_name(data["Name"].split(".")[0]),
                    state=(data["CurrentState"].split() or ["?"])[0].lower(),
                    desired=data["DesiredState"].lower(),
                    error=data.get("Error", "").strip('"'),
                    node=data.get("Node", ""),
                    ports=data.get("Ports", ""),
                )
            )
        return tasks

    def exists(self) -> bool:
        return bool(self.docker("service", "ls", "-q", "--filter", self.label()).split())

    def local_containers(self, service: str) -> list[str]:
        label = f"label=com.docker.swarm.service.name={self.full_name(service)}"
        return self.docker("ps", "-q", "--filter", label).split()

    def node_address(self, node: str) -> str:
        """A node's address as the swarm knows it (its advertise address); a manager may report 0.0.0.0
        there (moby #35437), its manager address is then the one."""
        found = self.docker(
            "node", "inspect", "--format", "{{.Status.Addr}} {{with .ManagerStatus}}{{.Addr}}{{end}}", node
        ).split()
        status = found[0] if found else ""
        if status in ("", "0.0.0.0") and len(found) > 1:
            return found[1].rsplit(":", 1)[0]
        return status or LOOPBACK

    def edge_host(self, tasks: list[Task] | None = None) -> str:
        """Where clients reach nginx. A single node is this host: 127.0.0.1 (whatever address it
        advertises, so a generated certificate for 127.0.0.1 still verifies). On several nodes nginx runs
        on edge nodes (SWARM_NGINX_CONSTRAINT), each publishing HTTP_PORT on its own address: the address of
        the first of them by name, or 127.0.0.1 while none runs nginx."""
        if self.node_count() <= 1:
            return LOOPBACK
        tasks = self.tasks() if tasks is None else tasks
        running = [t for t in tasks if t.service == NGINX.service and t.desired == t.state == "running"]
        nodes = sorted(t.node for t in running if t.node)
        return self.node_address(nodes[0]) if nodes else LOOPBACK

    def url(self, host: str | None = None) -> str:
        host = self.edge_host() if host is None else host
        if self.env.get("NGINX_TLS") == "1":
            return f"https://{host}:{self.env.get('HTTPS_PORT', '8443')}"
        return f"http://{host}:{self.env.get('HTTP_PORT', '8080')}"

    def node_count(self) -> int:
        return len(self.docker("node", "ls", "-q").split())


def ensure_swarm(env: Mapping[str, str]) -> None:
    """A swarm manager behind DOCKER_HOST: `docker swarm init` on an engine in no swarm (said in one line)."""
    state = run("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}", env=env).split()
    if state[:1] == ["inactive"]:
        print(
            f"this engine is in no swarm: `docker swarm init --advertise-addr {ADVERTISE_ADDRESS}` "
            "(a single-node swarm; to add nodes see docs/SWARM.md)",
            flush=True,
        )
        run("swarm", "init", "--advertise-addr", ADVERTISE_ADDRESS, env=env)
    elif state[:2] != ["active", "true"]:
        raise StackError(
            f"this engine's swarm state is {' '.join(state)}: RUNTIME=swarm needs a swarm manager "
            "(point DOCKER_HOST at a manager node)"
        )


def locust_wanted(config: Effective) -> bool:
    return config.settings.swarm_locust_workers > 0


def rendered_config(config: Effective, env: Mapping[str, str], locust: bool) -> dict[str, Any]:
    """docker-compose.yml + deploy/swarm.yml, merged and interpolated by compose itself."""
    compose = docker.compose_command()
    profiles = (*docker.LOADTEST_PROFILE * locust, *docker.profiles(config.settings))
    app = docker.Project(env).app_overlay()  # another app's image (APP_SRC, APP_REQUIREMENTS)
    files = [docker.COMPOSE_FILE, SWARM_FILE, *([app] if app else [])]
    command = [*compose, *(arg for path in files for arg in ("-f", str(path))), *profiles, "config"]
    result = subprocess.run(command, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise StackError(
            f"`{' '.join(compose)} config` of docker-compose.yml + deploy/swarm.yml failed: {last}"
        )
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def tmpfs_mount(entry: str) -> dict[str, Any]:
    """`/tmp:size=64m,mode=1777` as a stack's tmpfs mount (size only: swarm does not take the mode)."""
    target, _, options = entry.partition(":")
    mount: dict[str, Any] = {"type": "tmpfs", "target": target}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "size":
            mount["tmpfs"] = {"size": docker_bytes(value)}
    return mount


def docker_bytes(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = value.strip().lower().removesuffix("b")
    return int(value[:-1]) * units[value[-1]] if value[-1:] in units else int(value)


def port_target(port: Any) -> str:
    if isinstance(port, dict):
        return str(port.get("target"))
    return str(port).split("/")[0].rsplit(":", 1)[-1]


def swarm_ports(ports: list[Any]) -> list[Any]:
    """A host-mode port (deploy/swarm.yml) replaces the base file's ports with the same target."""
    host_mode = [p for p in ports if isinstance(p, dict) and p.get("mode") == "host"]
    replaced = {port_target(p) for p in host_mode}
    return [p for p in ports if port_target(p) not in replaced] + host_mode


def stack_file(data: dict[str, Any], config: Effective) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The deployable stack from compose's merged config, and which services lost or changed which key."""
    settings = config.settings
    changed: dict[str, list[str]] = {}
    services: dict[str, Any] = data.get("services", {})
    # deploy/swarm.yml names them without their profile, and compose then keeps them whatever the profiles.
    if settings.swarm_locust_workers == 0:
        for name in LOCUST_SERVICES:
            services.pop(name, None)
    if not settings.monitoring:
        for name in docker.MONITORING_SERVICES:
            services.pop(name, None)
    if not REDIS.wanted(settings):
        services.pop(REDIS.service, None)  # REDIS_URL names another Redis, or the app is not the demo
    for name, service in services.items():
        for key in (*DROPPED, *CONVERTED):
            if key in service:
                changed.setdefault(key, []).append(name)
        for key in DROPPED:
            service.pop(key, None)
        mounts = [tmpfs_mount(entry) for entry in service.pop("tmpfs", None) or []]
        if mounts:
            service["volumes"] = [*service.get("volumes", []), *mounts]
        if name in UNPUBLISHED:
            service.pop("ports", None)
        if "ports" in service:
            service["ports"] = swarm_ports(service["ports"])
        for resources in (service.get("deploy", {}).get("resources") or {}).values():
            if "cpus" in resources:  # compose prints a number, the stack schema wants a string
                resources["cpus"] = str(resources["cpus"])
    if settings.swarm_nginx_constraint and NGINX.service in services:
        placement = services[NGINX.service].setdefault("deploy", {}).setdefault("placement", {})
        placement["constraints"] = [*placement.get("constraints", []), settings.swarm_nginx_constraint]
    data.pop("name", None)  # compose v2 names the project; the stack's name is given to `stack deploy`
    for network in data.get("networks", {}).values():
        if isinstance(network, dict):
            network.pop("name", None)
    data["version"] = "3.9"
    return data, changed


def tag_images(
    config: Effective, env: Mapping[str, str], stack: dict[str, Any], keep: Mapping[str, str] | None = None
) -> None:
    """Point each service at [SWARM_REGISTRY/]repository:<content id> of its built image (tagged here,
    pushed with a registry): a rebuilt image is a changed spec, so `make up` rolls it out. `keep`: the
    images services already run, for a reload that must not change the code."""
    registry = config.settings.swarm_registry
    done: dict[str, str] = {}
    for name, service in stack.get("services", {}).items():
        local = service["image"]
        if keep and name in keep:
            service["image"] = keep[name]
            continue
        if local not in done:
            image_id = run("image", "inspect", "--format", "{{.Id}}", local, env=env).strip()
            repository = local.rsplit("/", 1)[-1].split(":")[0]
            ref = f"{repository}:{image_id.removeprefix('sha256:')[:12]}"
            ref = f"{registry}/{ref}" if registry else ref
            run("tag", local, ref, env=env)
            if registry:
                print(f"pushing {ref} ...", flush=True)
                push(ref, registry, env)
            done[local] = ref
        service["image"] = done[local]


def push(ref: str, registry: str, env: Mapping[str, str]) -> None:
    """`docker push` by the manager's engine; a registry it cannot reach is said in one line naming
    SWARM_REGISTRY and the node."""
    try:
        run("push", ref, env=env, timeout=1800)
    except StackError as error:
        node = run("info", "--format", "{{.Name}}", env=env).strip() or "the manager"
        detail = str(error).split(" failed: ", 1)[-1]
        raise StackError(
            f"SWARM_REGISTRY={registry}: node {node} (the manager, DOCKER_HOST) cannot push {ref}: {detail}"
        ) from None


def with_tls(stack: dict[str, Any], served: tls.Files, https_port: int, name: str) -> None:
    """NGINX_TLS=1: the certificate as a swarm config and the key as a swarm secret — swarm hands both to
    every node that runs nginx, where a compose bind mount would name a file of this host only — mounted
    where the container's NGINX_TLS_CERT/KEY point, the key readable by nginx's uid alone; HTTPS_PORT
    published in host mode. Swarm cannot change a config or secret in place, so each is named by its
    content: a renewed certificate is a new one, and the nginx task is replaced (stop-first)."""
    nginx = stack["services"][NGINX.service]
    for kind, source, path, target, mode in (
        ("configs", "tls_cert", served.cert, docker.CONTAINER_TLS_CERT, 0o444),
        ("secrets", "tls_key", served.key, docker.CONTAINER_TLS_KEY, 0o400),
    ):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        stack.setdefault(kind, {})[source] = {"file": str(path), "name": f"{name}_{source}_{digest}"}
        owner = str(docker.NGINX_UID)
        nginx[kind] = [{"source": source, "target": target, "uid": owner, "gid": owner, "mode": mode}]
    https = {"target": docker.CONTAINER_HTTPS_PORT, "published": https_port, "mode": "host"}
    nginx["ports"] = [*nginx.get("ports", []), https]


def render(
    config: Effective, env: Mapping[str, str], run_dir: Path, keep: Mapping[str, str] | None = None
) -> Path:
    """Build nothing: merge, convert, tag and write `<run_dir>/stack.yml`."""
    stack, _ = stack_file(rendered_config(config, env, locust_wanted(config)), config)
    served = local.ensure_tls(config.settings)
    if served:
        with_tls(stack, served, config.settings.https_port, Stack(env).name)
    tag_images(config, env, stack, keep)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / STACK_FILE
    header = "# rendered by stackctl from docker-compose.yml + deploy/swarm.yml; `make up` rewrites it\n"
    path.write_text(header + yaml.safe_dump(stack, sort_keys=False))
    return path


def deploy_environment(config: Effective, environ: Mapping[str, str] | None, stack: Stack) -> dict[str, str]:
    """Knob values for compose's interpolation; a running app keeps its `make scale` count unless
    SWARM_APP_REPLICAS comes from this command's environment."""
    env = docker.knob_environment(config, environ)
    app = stack.services().get(APP.service)
    if app is not None and config.values["SWARM_APP_REPLICAS"].source != "environment":
        env["SWARM_APP_REPLICAS"] = str(app.replicas)
    return env


def deploy(
    config: Effective, environ: Mapping[str, str] | None, run_dir: Path, build: bool = True
) -> tuple[Stack, list[str]]:
    """Build, tag (push), render and `docker stack deploy`; returns the stack and its task ids before.
    Without `build` the running services keep their images: only the knobs change."""
    stack = Stack(docker.knob_environment(config, environ))
    env = deploy_environment(config, environ, stack)
    keep = None
    if build:
        project = docker.Project(env)
        docker.build(project, loadtest=locust_wanted(config))
        print(docker.check_image(project, config, run_dir), flush=True)
    else:
        keep = {name: service.image for name, service in stack.services().items()}
    path = render(config, env, run_dir, keep)
    before = [task.id for task in stack.tasks()] if stack.exists() else []
    registry = config.settings.swarm_registry
    command = ["stack", "deploy", "--prune", "--resolve-image", "always" if registry else "never"]
    command += ["--with-registry-auth"] * bool(registry)
    output = stack.docker(*command, "-c", str(path), stack.name, timeout=600)
    for line in output.splitlines():
        if line.startswith(("Creating", "Updating", "Removing")):
            print(f"  {line}", flush=True)
    return stack, before


def up(config: Effective, environ: Mapping[str, str] | None, run_dir: Path) -> Stack:
    env = docker.knob_environment(config, environ)
    ensure_swarm(env)
    ports = {"HTTP_PORT": config.settings.http_port}
    if config.settings.nginx_tls:
        ports["HTTPS_PORT"] = config.settings.https_port
    # On one node nginx publishes on this host; on several it runs on edge nodes, whose ports we cannot see.
    here = Stack(env).node_count() == 1
    for knob, port in ports.items():
        if here and NGINX.service not in Stack(env).services() and port_in_use(LOOPBACK, port):
            raise StackError(f"{knob}: port {port} is already in use by another process; choose a free one")
    stack, before = deploy(config, environ, run_dir)
    wait_converged(stack, config, before)
    apps = stack.services()[APP.service].replicas
    print(f"stack is up (swarm runtime, stack {stack.name}, app x{apps}): {stack.url()}")
    if config.settings.monitoring:
        print(
            monitoring.announce(
                f"not published (docs/SWARM.md): http://prometheus:9090 on {stack.name}_default"
            )
        )
    return stack


def reload(config: Effective, environ: Mapping[str, str] | None, run_dir: Path) -> None:
    """A rolling update with the running images: re-deploy with the effective knobs (changed services roll;
    the app start-first and health-gated), and an app whose spec did not change is replaced anyway
    (`service update --force`). nginx stays unless its knobs changed. `make up` also rebuilds the images."""
    stack = Stack(docker.knob_environment(config, environ))
    previous = require_running(stack)
    stack, before = deploy(config, environ, run_dir, build=False)
    after = stack.services()
    if after[APP.service].template == previous[APP.service].template:
        stack.docker("service", "update", "--force", "--detach", stack.full_name(APP.service), timeout=120)
        print("  app: no knob of it changed; replacing its tasks anyway (rolling, start-first)", flush=True)
    if NGINX.service in after and after[NGINX.service].template != previous[NGINX.service].template:
        print("  nginx: its knobs changed; swarm replaces it (stop-first: a host-mode port has one owner)")
    wait_converged(stack, config, before)
    print(f"reloaded (rolling update, start-first): {stack.url()}")


def nginx_upstreams(stack: Stack) -> list[int]:
    """How many app addresses each nginx on this node balances over, as its entrypoint lists them (nginx
    on other nodes does the same): what it rendered for an older nginx, what DNS has said long enough for
    an nginx that resolves tasks.app itself."""
    counts = []
    for container in stack.local_containers(NGINX.service):
        try:
            listed = stack.docker("exec", container, "cat", f"{NGINX_RUN_DIR}/upstream.addresses", timeout=20)
        except StackError:
            listed = ""
        counts.append(len(listed.split()))
    return counts


def require_running(stack: Stack) -> dict[str, Service]:
    services = stack.services()
    if APP.service not in services or NGINX.service not in services:
        raise StackError(f"swarm stack {stack.name} is not running; start it with `make up`")
    return services


def scale(config: Effective, replicas: int, environ: Mapping[str, str] | None = None) -> None:
    if replicas < 1:
        raise StackError(f"APP={replicas}: the number of app tasks must be at least 1")
    stack = Stack(docker.knob_environment(config, environ))
    require_running(stack)
    before = [task.id for task in stack.tasks()]
    stack.docker("service", "scale", "--detach", f"{stack.full_name(APP.service)}={replicas}")
    wait_converged(stack, config, before)
    print(f"{replicas} app task(s) behind nginx: {stack.url()}")


def wait_converged(
    stack: Stack, config: Effective, before: Iterable[str], within: float = CONVERGE_WITHIN
) -> None:
    """Until every service runs its desired tasks, all healthy (a task with a HEALTHCHECK is `running`
    only once healthy), no update is in progress, nginx balances over every app task and no other, and
    /healthz answers through nginx on its edge node's address."""
    known = set(before)
    updates_before = {name: s.update_started for name, s in stack.services().items()}
    deadline = time.monotonic() + within
    verify = local.verification(tls.files(config.settings) if config.settings.nginx_tls else None)
    if config.settings.nginx_tls and stack.node_count() > 1:
        # The edge is known here by its address, which a certificate for the edge's names does not carry:
        # readiness is checked without the name; clients verify the names the certificate has.
        verify = False
    pending_since: dict[str, float] = {}
    waiting = "nginx's public port"
    while time.monotonic() < deadline:
        services = stack.services()
        tasks = stack.tasks()
        check_pulls(config, tasks, known)
        for service in services.values():
            check_update(service, updates_before.get(service.name))
            check_failures(stack, config, service, [t for t in tasks if t.service == service.name], known)
            check_pending(config, service, tasks, pending_since)
        lagging = [name for name, service in services.items() if not converged(service, tasks)]
        url = stack.url(stack.edge_host(tasks))
        if not lagging and APP.service in services:
            lagging = nginx_lagging(stack, tasks, url, verify)
        waiting = ", ".join(lagging) or f"nginx's public port ({url})"
        if services and not lagging and docker.answers(f"{url}{config.settings.app_liveness_path}", verify):
            return
        time.sleep(1)
    raise StackError(f"not converged within {within:.0f} s: {waiting}; see `make ps` and `make logs`")


def nginx_lagging(stack: Stack, tasks: list[Task], url: str, verify: ssl.SSLContext | bool) -> list[str]:
    """What nginx still lacks: an nginx on this node is asked which app addresses it balances over; one
    on another node (whose containers this engine cannot enter) is asked through its port which tasks
    answer /api/info, until every running app task has and no other."""
    apps = [t for t in tasks if t.service == APP.service and t.desired == t.state == "running"]
    counts = nginx_upstreams(stack)
    if counts:
        behind = any(count != len(apps) for count in counts)
        return [f"nginx to balance over {len(apps)} app task(s)"] if behind else []
    expected = task_hostnames(stack, apps)
    seen = served_by(url, verify, 4 * len(apps))
    if seen is None or seen == expected:
        return []
    if seen - expected:
        return [f"nginx to stop sending to {len(seen - expected)} app task(s) that no longer run"]
    return [f"nginx to send to all {len(expected)} app task(s) (answers from {len(seen)})"]


def task_hostnames(stack: Stack, tasks: list[Task]) -> set[str]:
    """The hostname each task's container has (its container id's first 12 digits, Docker's default)."""
    if not tasks:
        return set()
    found = stack.docker(
        "inspect", "--format", "{{.Status.ContainerStatus.ContainerID}}", *[t.id for t in tasks]
    )
    return {container[:12] for container in found.split()}


def served_by(url: str, verify: ssl.SSLContext | bool, requests: int) -> set[str] | None:
    """The app hostnames that answered `requests` GET /api/info through nginx; None when nginx does not
    answer yet (the /healthz check says so)."""
    seen = set()
    try:
        with httpx2.Client(verify=verify, timeout=2) as client:
            for _ in range(requests):
                response = client.get(f"{url}/api/info")
                if response.status_code != 200:
                    return None
                seen.add(str(response.json().get("hostname", "")))
    except (httpx2.HTTPError, ValueError):
        return None
    return seen


def check_pulls(config: Effective, tasks: list[Task], known: set[str]) -> None:
    """A task rejected for want of its image: the node could not pull it. Said at once, in one line naming
    the node and SWARM_REGISTRY: swarm would go on placing tasks elsewhere, or retrying for ever."""
    registry = config.settings.swarm_registry
    for task in tasks:
        if task.id in known or task.state not in ("rejected", "failed") or "No such image" not in task.error:
            continue
        image = task.error.split("No such image: ", 1)[-1].split("@")[0]
        if registry:
            why = (
                f"it has not got {image} and could not pull it from SWARM_REGISTRY={registry}: every node "
                "must reach that address (a plain-HTTP registry also in each engine's insecure-registries)"
            )
        else:
            why = (
                f"it has not got {image}, and SWARM_REGISTRY is empty: the images exist only on the node "
                "that built them; set SWARM_REGISTRY to a registry every node can pull from (docs/SWARM.md)"
            )
        raise StackError(f"{task.service}: node {task.node or '?'} cannot run its task: {why}")


def converged(service: Service, tasks: list[Task]) -> bool:
    mine = [t for t in tasks if t.service == service.name and t.desired == "running"]
    running = [t for t in mine if t.state == "running"]
    desired = len(mine) if service.global_mode else service.replicas
    return service.update_state not in PROGRESSING and len(running) == desired and len(mine) == desired


def check_update(service: Service, started_before: str | None) -> None:
    if service.update_state in FAILED_UPDATE and service.update_started != started_before:
        raise StackError(
            f"the update of {service.name} failed and was {service.update_state.replace('_', ' ')}: "
            f"{service.update_message}"
        )


def check_failures(
    stack: Stack, config: Effective, service: Service, tasks: list[Task], known: set[str]
) -> None:
    failed = [t for t in tasks if t.id not in known and t.state in ("failed", "rejected")]
    if len(failed) < FAILED_TASKS:
        return
    last = failed[0]  # `stack ps` lists the newest first
    try:
        logs = stack.docker("service", "logs", "--raw", "--tail", "3", last.id, timeout=30)
    except StackError:
        logs = ""
    tail = " | ".join(logs.strip().splitlines()[-3:]) or "no log output"
    raise StackError(f"{service.name}: {len(failed)} tasks failed ({last.error or last.state}): {tail}")


def check_pending(config: Effective, service: Service, tasks: list[Task], since: dict[str, float]) -> None:
    """A task no node takes (constraints, resources), or a global service no node may run."""
    mine = [t for t in tasks if t.service == service.name]
    stuck = [t.error for t in mine if t.state == "pending" and t.error]
    if service.global_mode and not [t for t in mine if t.desired == "running"]:
        stuck.append("no node satisfies its placement constraints")
    if not stuck:
        since.pop(service.name, None)
        return
    first = since.setdefault(service.name, time.monotonic())
    if time.monotonic() - first < PENDING_FOR:
        return
    constraint = config.settings.swarm_nginx_constraint
    hint = f" (SWARM_NGINX_CONSTRAINT={constraint}: label a node, docs/SWARM.md)" if constraint else ""
    raise StackError(
        f"{service.name}: no node takes its task: {stuck[0]}{hint if service.name == 'nginx' else ''}"
    )


def down(stack: Stack | None = None, within: float = 120.0) -> None:
    """`docker stack rm`, then wait until its services, containers and network are gone. The swarm stays."""
    stack = stack or Stack()
    if stack.exists():
        try:
            stack.docker("stack", "rm", stack.name)
        except StackError as error:
            # The services are gone; the overlay network may still hold a task's endpoint on another node
            # (seen after a node loss). The wait below removes it once nothing uses it.
            if "Failed to remove network" not in str(error):
                raise
    elif not leftovers(stack):
        print(f"nothing to stop: no swarm stack {stack.name}")
        return
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = leftovers(stack)
        if not left:
            if stack.node_count() > 1:
                print(
                    f"removed swarm stack {stack.name}: services, network and this node's containers (the "
                    "swarm stays); the other nodes stop theirs within COMPOSE_STOP_GRACE_PERIOD"
                )
            else:
                print(f"removed swarm stack {stack.name}: services, containers and network (the swarm stays)")
            return
        if left == ["network"]:  # the manager retries; remove it ourselves once nothing uses it
            for network in stack.docker("network", "ls", "-q", "--filter", stack.label()).split():
                subprocess.run(["docker", "network", "rm", network], env=stack.env, capture_output=True)
        time.sleep(1)
    raise StackError(
        f"swarm stack {stack.name}: still left after {within:.0f} s: {', '.join(leftovers(stack))}"
    )


def leftovers(stack: Stack) -> list[str]:
    left = []
    for kind, command in (
        ("services", ("service", "ls", "-q")),
        ("containers", ("ps", "-aq")),
        ("network", ("network", "ls", "-q")),
    ):
        if stack.docker(*command, "--filter", stack.label()).split():
            left.append(kind)
    return left


def ps(stack: Stack | None = None) -> None:
    """The services, then each running task with its node and ports. Docker binds a host-mode port on
    IPv4 and IPv6 (a docker-proxy each) and `docker stack ps` lists it once per binding; listed once here."""
    stack = stack or Stack()
    if not stack.exists():
        print(f"no swarm stack {stack.name}")
        return
    print(stack.docker("stack", "services", stack.name), end="")
    tasks = [t for t in stack.tasks() if t.desired == "running"]
    rows = [("TASK", "ID", "NODE", "STATE", "PORTS", "ERROR")]
    rows += [(t.name[:24], t.id[:12], t.node, t.state, unique_ports(t.ports), t.error) for t in tasks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"nginx: {stack.url(stack.edge_host(tasks))}")


def unique_ports(ports: str) -> str:
    return ",".join(dict.fromkeys(p.strip() for p in ports.split(",") if p.strip()))


def logs(follow: bool, stack: Stack | None = None) -> None:
    """`docker service logs` of every service of the stack (one process per service when following)."""
    stack = stack or Stack()
    names = [stack.full_name(name) for name in sorted(stack.services())]
    if not names:
        raise StackError(f"no swarm stack {stack.name}; start it with `make up`")
    commands = [["docker", "service", "logs", "--tail", "50", *(["-f"] if follow else []), n] for n in names]
    processes = [subprocess.Popen(command, env=stack.env) for command in commands]
    try:
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
    sys.stdout.flush()


def validate(config: Effective) -> Validation:
    """The stack file `make up` would deploy (images left at their local tags), checked by `docker stack
    config`; the detail names what the stack drops or converts from docker-compose.yml."""
    name = "docker stack config"
    env = {**os.environ, **{knob: dump(config.settings, knob) for knob in KNOBS}}
    try:
        data = rendered_config(config, env, locust_wanted(config))
    except StackError as error:
        status: ValidationStatus = "skipped" if "not installed" in str(error) else "failed"
        return Validation("swarm", name, status, str(error))
    stack, changed = stack_file(data, config)
    with tempfile.TemporaryDirectory(prefix="stack-check-") as scratch:
        path = Path(scratch) / STACK_FILE
        path.write_text(json.dumps(stack))
        try:
            result = subprocess.run(
                ["docker", "stack", "config", "-c", str(path)], capture_output=True, text=True, timeout=60
            )
        except OSError as error:
            return Validation("swarm", name, "skipped", f"the docker CLI cannot run: {error}")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit {result.returncode}"]
        return Validation("swarm", name, "failed", lines[-1])
    stand_ins = {**DROPPED, **CONVERTED}
    notes = "; ".join(
        f"{key} ({', '.join(services)}) -> {stand_ins[key]}" for key, services in changed.items()
    )
    return Validation(
        "swarm", name, "ok", f"docker-compose.yml + deploy/swarm.yml; not as in compose: {notes}"
    )


class Swarm(Runtime):
    """The stack as a `docker stack` (docker-compose.yml + deploy/swarm.yml) on a swarm manager."""

    reload_anyway = "replacing the app tasks anyway (a rolling update)"
    swarm_services = True
    unavailable = docker.Docker.unavailable

    def container_filters(self, project: str, service: str) -> list[str]:
        return ["--filter", f"label=com.docker.swarm.service.name={project}_{service}"]

    def up(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        up(config, environ, run_dir)

    def reload(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        reload(config, environ, run_dir)

    def scale(self, run_dir: Path, config: Effective, environ: Mapping[str, str], replicas: int) -> None:
        scale(config, replicas, environ)

    def down(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        down(Stack(environ))

    def ps(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        ps(Stack(environ))

    def logs(self, run_dir: Path, environ: Mapping[str, str], follow: bool) -> None:
        logs(follow, Stack(environ))

    def url(self, settings: Settings, environ: Mapping[str, str] | None = None) -> str:
        port = settings.https_port if settings.nginx_tls else settings.http_port
        return f"{'https' if settings.nginx_tls else 'http'}://{self.edge_host(environ)}:{port}"

    def plain_url(self, settings: Settings, environ: Mapping[str, str] | None = None) -> str:
        return f"http://{self.edge_host(environ)}:{settings.http_port}"

    def edge_host(self, environ: Mapping[str, str] | None) -> str:
        try:
            return Stack(environ).edge_host()
        except (StackError, subprocess.TimeoutExpired):
            return LOOPBACK  # no engine or no stack: where a single-node stack would answer

    def port_knobs(self) -> tuple[str, ...]:
        # As before the interface: the local runtime's set, though swarm publishes only HTTP(S)_PORT here.
        return ("HTTP_PORT", "HTTPS_PORT", "NGINX_STATUS_PORT", "GUNICORN_BIND")

    def available(self) -> bool:
        return docker.engine_reachable()

    def host_facts(self, settings: Settings) -> HostFacts:
        """Asks the engine behind DOCKER_HOST what it applies to services (docker version, docker info)."""
        return HostFacts.probed_swarm(settings)

    def validations(self, config: Effective) -> list[Validation]:
        return [validate(config)]

    def app_where(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> preflight.Where:
        return docker.built_app_where(run_dir, config, environ)

    def preflight(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> str:
        where = self.app_where(run_dir, config, environ)
        return preflight.check_app(where, config, run_dir / preflight.LOG)
