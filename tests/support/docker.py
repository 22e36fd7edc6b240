"""The compose stack on a real Docker engine, for the docker tier: the engine check (skip, or fail with
REQUIRE_DOCKER=1), `docker` itself, an isolated project's environment (free ports and subnet) and
`DockerStack`, what the through-nginx tests of tests/stack need plus compose and docker access."""

from __future__ import annotations

import ipaddress
import json
import os
import resource
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from deploy.stackctl import stack as stackctl
from deploy.stackctl.config import ROOT
from deploy.stackctl.docker import COMPOSE_FILE, compose_command
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import free_port_knobs
from service.settings import Settings
from tests.support.stack import SMALL_WS_MAX_SIZE

BUILD_TIMEOUT = 1200


def unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(
        f"docker tier skipped: {reason} (start an engine or set DOCKER_HOST; CI sets REQUIRE_DOCKER=1)"
    )


def docker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)


def used_subnets() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    ids = docker("network", "ls", "-q").stdout.split()
    inspected = json.loads(docker("network", "inspect", *ids).stdout) if ids else []
    return [
        ipaddress.ip_network(config["Subnet"])
        for network in inspected
        for config in (network.get("IPAM") or {}).get("Config") or []
        if config.get("Subnet")
    ]


def host_routes() -> list[ipaddress.IPv4Network]:
    """Networks this host already routes (other engines' bridges included)."""
    routes = []
    with open("/proc/net/route") as table:
        for line in list(table)[1:]:
            fields = line.split()
            destination, mask = (int(fields[i], 16).to_bytes(4, "little") for i in (1, 7))
            if mask != bytes(4):
                routes.append(
                    ipaddress.IPv4Network((destination, ipaddress.IPv4Address(mask).exploded), strict=False)
                )
    return routes


def free_subnet() -> str:
    taken = [*used_subnets(), *host_routes()]
    for third in range(90, 250):
        candidate = ipaddress.ip_network(f"172.28.{third}.0/24")
        if not any(candidate.overlaps(other) for other in taken):
            return str(candidate)
    raise RuntimeError("no free 172.28.x.0/24 subnet for the test project")


@dataclass
class DockerStack:
    """What the through-nginx tests of tests/stack need (url, ws_url), plus compose and docker access."""

    env: dict[str, str]
    compose_base: list[str] = field(default_factory=compose_command)
    handle: stackctl.Handle | None = field(default=None, repr=False)

    @property
    def project(self) -> str:
        return self.env["COMPOSE_PROJECT_NAME"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['HTTP_PORT']}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    @property
    def subnet(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.env["COMPOSE_SUBNET"])

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = [*self.compose_base, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stackctl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy.stackctl", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        label = f"label=com.docker.compose.project={self.project}"
        ids = docker("ps", "-aq", "--filter", label, env=self.env).stdout.split()
        inspected: list[dict[str, Any]] = (
            json.loads(docker("inspect", *ids, env=self.env).stdout) if ids else []
        )
        return [
            c
            for c in inspected
            if service in (None, c["Config"]["Labels"]["com.docker.compose.service"])
            and c["State"]["Status"] == "running"
        ]

    def exec(
        self, container: dict[str, Any], *command: str, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return docker("exec", *(["-u", user] if user else []), container["Id"], *command, env=self.env)


def stack_environment() -> dict[str, str]:
    env = stackctl.isolated_base()  # build inputs (PYTHON_IMAGE, NGINX_IMAGE, OFFLINE) stay
    # The engine may not raise the open-file limit above its own hard limit (CI: 20000, no CAP_SYS_RESOURCE).
    nofile = min(Settings().compose_nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    env.update(
        RUNTIME="docker",
        PROFILE="default",
        COMPOSE_PROJECT_NAME=f"blueprint-test-{secrets.token_hex(3)}",
        COMPOSE_SUBNET=free_subnet(),
        COMPOSE_NOFILE=str(nofile),
        **free_port_knobs("docker"),
        # As the local tier's one_worker_stack: one worker, and an app timeout short enough to show.
        WEB_CONCURRENCY="1",
        APP_REQUEST_TIMEOUT="2",
        # Small enough that an oversize message is fully sent before the app closes the socket (see the test).
        UVICORN_WS_MAX_SIZE=str(SMALL_WS_MAX_SIZE),
        GUNICORN_LOG_LEVEL="warning",
        APP_LOG_LEVEL="warning",
    )
    return env


def require_engine() -> None:
    """Skip (or, with REQUIRE_DOCKER=1, fail) without an engine and a compose binary."""
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        unavailable(f"the docker CLI failed: {error}")
    if info.returncode != 0:
        unavailable(f"no Docker engine reachable ({(info.stderr.strip().splitlines() or ['?'])[-1]})")
    try:
        compose_command()
    except StackError as error:
        unavailable(str(error))
