"""What a drill needs from where it runs, asked before its stack starts: a Docker engine, a swarm of several
nodes, a way to take a node down. A drill lists its needs (`Drill.needs`); the first one missing makes its
row `skipped` with the reason, whatever the runtime is called."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# The command line of node-loss: `{node}` is replaced by the node's hostname (`docker node ls`).
NODE = "{node}"


@dataclass(frozen=True)
class Site:
    """What a drill run can reach and drive: its environment (DOCKER_HOST, ...) and the commands that take a
    swarm node down and bring it back (DRILL_NODE_DOWN, DRILL_NODE_UP)."""

    environ: Mapping[str, str] = field(default_factory=dict)
    node_down: str = ""
    node_up: str = ""


Capability = Callable[[Site], str | None]  # None: present; else why not, in one line


def engine(site: Site) -> str | None:
    try:
        info = subprocess.run(["docker", "info"], env=dict(site.environ), capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        info = None
    if info is not None and info.returncode == 0:
        return None
    return "no Docker engine reachable (`docker info` failed); start one or set DOCKER_HOST"


def ready_nodes(site: Site) -> list[dict[str, str]]:
    """The swarm's nodes as the manager behind DOCKER_HOST lists them (empty: no swarm manager there)."""
    listed = subprocess.run(
        ["docker", "node", "ls", "--format", "{{json .}}"],
        env=dict(site.environ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if listed.returncode != 0:
        return []
    nodes = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return [n for n in nodes if n.get("Status") == "Ready" and n.get("Availability") == "Active"]


def swarm_of(count: int) -> Capability:
    """A swarm manager at DOCKER_HOST with at least `count` nodes ready for tasks."""

    def check(site: Site) -> str | None:
        ready = len(ready_nodes(site))
        if ready >= count:
            return None
        where = site.environ.get("DOCKER_HOST", "the default engine")
        return (
            f"needs a swarm of {count} ready nodes at DOCKER_HOST ({where} has {ready}); "
            "deploy/multinode/nodes.sh makes one on this host (docs/SWARM.md)"
        )

    return check


def node_control(site: Site) -> str | None:
    if NODE in site.node_down and NODE in site.node_up:
        return None
    return (
        "set DRILL_NODE_DOWN and DRILL_NODE_UP to commands that stop and start node {node}'s engine, e.g. "
        "'ssh {node} sudo systemctl stop docker' (`deploy/multinode/nodes.sh env` prints its own)"
    )
