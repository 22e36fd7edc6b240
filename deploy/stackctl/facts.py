"""The facts of the host a stack will run on, which the ordering rules compare the knobs with: the listen
backlog cap, the open-file limit, the usable CPUs and, for swarm, what the engine supports. Gathering them
reads /proc and the rlimits or asks the Docker engine; deploy/stackctl/rules.py only receives them.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings, usable_cpus

SOMAXCONN_FILE = Path("/proc/sys/net/core/somaxconn")

# Service (swarm) support of what docker-compose.yml sets, by the engine's API version.
SWARM_SYSCTLS_API = "1.40"  # Docker 19.03
SWARM_ULIMITS_API = "1.41"  # Docker 20.10, as capabilities (cap_drop)


def api_at_least(version: str | None, minimum: str) -> bool:
    if version is None:
        return True  # unknown: assume a current engine; the rules warn that it could not be asked
    return tuple(int(part) for part in version.split(".")) >= tuple(int(part) for part in minimum.split("."))


@dataclass(frozen=True)
class Fact:
    """A limit that is not a knob of ours: its name says where it was read."""

    name: str
    value: int


@dataclass(frozen=True)
class SwarmFacts:
    """What the engine behind DOCKER_HOST says about swarm; None where no engine answered."""

    api_version: str | None
    nodes: int | None

    @classmethod
    def probe(cls) -> SwarmFacts:
        def ask(*command: str) -> str | None:
            if not shutil.which("docker"):
                return None
            try:
                done = subprocess.run(["docker", *command], capture_output=True, text=True, timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                return None
            return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None

        api = ask("version", "--format", "{{.Server.APIVersion}}")
        nodes = ask("info", "--format", "{{.Swarm.Nodes}}")
        return cls(api, int(nodes) if nodes and nodes.isdigit() and int(nodes) > 0 else None)


@dataclass(frozen=True)
class HostFacts:
    somaxconn: Fact
    open_files: Fact
    cpus: int
    swarm: SwarmFacts | None = None  # set for a stack on a swarm only
    # The stack runs as docker-compose.yml's containers (its overlays set both ends of a unix bind).
    compose: bool = False

    @classmethod
    def local(cls) -> HostFacts:
        try:
            somaxconn = int(SOMAXCONN_FILE.read_text())
        except (OSError, ValueError):
            somaxconn = 4096  # Linux's default since 5.4; macOS reports no such file
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        open_files = soft_limit if soft_limit != resource.RLIM_INFINITY else 1 << 20
        return cls(
            Fact("net.core.somaxconn (this host)", somaxconn),
            Fact("ulimit -n (this host)", open_files),
            usable_cpus(),
        )

    @classmethod
    def docker(cls, settings: Settings) -> HostFacts:
        return cls(
            Fact("COMPOSE_SOMAXCONN", settings.compose_somaxconn),
            Fact("COMPOSE_NOFILE", settings.compose_nofile),
            usable_cpus(),
            compose=True,
        )

    @classmethod
    def on_swarm(cls, settings: Settings, swarm: SwarmFacts) -> HostFacts:
        """The compose knobs, where the engine applies them to services; else what a task gets instead."""
        somaxconn = Fact("COMPOSE_SOMAXCONN", settings.compose_somaxconn)
        if not api_at_least(swarm.api_version, SWARM_SYSCTLS_API):
            somaxconn = Fact(
                f"net.core.somaxconn of a task (engine API {swarm.api_version}: no sysctls)", 128
            )
        open_files = Fact("COMPOSE_NOFILE", settings.compose_nofile)
        if not api_at_least(swarm.api_version, SWARM_ULIMITS_API):
            open_files = Fact(f"ulimit -n of a task (engine API {swarm.api_version}: no ulimits)", 1024)
        return cls(somaxconn, open_files, usable_cpus(), swarm, compose=True)

    @classmethod
    def probed_swarm(cls, settings: Settings) -> HostFacts:
        """Asks the engine behind DOCKER_HOST (docker version, docker info)."""
        return cls.on_swarm(settings, SwarmFacts.probe())
