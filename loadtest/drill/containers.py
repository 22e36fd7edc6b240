"""What the drills on an engine need beyond stack.Handle: their own project name and subnet (a compose
project or a swarm stack), scaling and killing app containers of *that* project (the handle's, not the one
this process's environment names), and the containers' logs before the stack goes."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import resource
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

from deploy.stackctl import docker, stack
from loadtest.drill.plan import DrillError
from service.settings import Settings


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Compose's progress output and stackctl's lines stay out of the drill's table."""
    with stack.quietly(True), contextlib.redirect_stderr(io.StringIO()):
        yield


def free_subnet() -> str:
    """A 172.28.x.0/24 that no Docker network of the engine uses."""
    ids = subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True).stdout.split()
    inspected = subprocess.run(["docker", "network", "inspect", *ids], capture_output=True, text=True)
    taken = [
        ipaddress.ip_network(config["Subnet"])
        for network in (json.loads(inspected.stdout) if ids and inspected.returncode == 0 else [])
        for config in (network.get("IPAM") or {}).get("Config") or []
        if config.get("Subnet")
    ]
    for third in range(120, 250):
        candidate = ipaddress.ip_network(f"172.28.{third}.0/24")
        if not any(candidate.overlaps(other) for other in taken):
            return str(candidate)
    raise DrillError("no free 172.28.x.0/24 subnet for the drill's compose project; set COMPOSE_SUBNET")


def project_knobs(drill: str) -> dict[str, str]:
    """Its own compose project beside any `make up` stack: name, subnet, and an open-file limit the
    engine may set (it cannot exceed its own hard limit)."""
    nofile = min(Settings().compose_nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    return {
        "COMPOSE_PROJECT_NAME": f"drill-{drill}-{secrets.token_hex(3)}",
        "COMPOSE_SUBNET": free_subnet(),
        "COMPOSE_NOFILE": str(nofile),
    }


def scale(handle: stack.Handle, replicas: int) -> None:
    """`make scale APP=replicas` for this handle's project (not the one this process's environment names)."""
    with quiet():
        handle.scale(replicas)


def kill(handle: stack.Handle, container: docker.Container) -> None:
    killed = subprocess.run(
        ["docker", "kill", container.id], env=handle.project().env, capture_output=True, text=True
    )
    if killed.returncode != 0:
        raise DrillError(f"docker kill {container.name} failed: {killed.stderr.strip()}")


def save_logs(handle: stack.Handle, run_dir: Path) -> None:
    """Every container's log (nginx's error lines say why a request failed) into the drill's run dir,
    before the stack and its logs go; kept gzipped with the local runtime's logs. A swarm stack's come
    through the manager from every node (`docker service logs`)."""
    if handle.backend.swarm_services:
        swarm_stack = handle.swarm_stack()
        for name in sorted(swarm_stack.services()):
            full = swarm_stack.full_name(name)
            logs = subprocess.run(
                ["docker", "service", "logs", "--timestamps", "--no-trunc", full],
                env=swarm_stack.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            (run_dir / f"{name}.log").write_text(logs.stdout + logs.stderr)
        return
    project = handle.project()
    logs = subprocess.run(
        project.command("logs", "--no-color", "--timestamps"), env=project.env, capture_output=True, text=True
    )
    (run_dir / "compose.log").write_text(logs.stdout + logs.stderr)
