"""Three swarm nodes in network namespaces (deploy/multinode/nodes.sh) for the multinode tier: the check
that this machine can make them (skip, or fail with REQUIRE_MULTINODE=1), the nodes as an object, and a
snapshot of what they could leave behind on the host, to compare before and after."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.stackctl.config import ROOT

NODES_SH = ROOT / "deploy" / "multinode" / "nodes.sh"
TOOLS = ("ip", "unshare", "dockerd", "containerd", "docker", "docker-registry", "curl")


def unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_MULTINODE") == "1":
        pytest.fail(f"REQUIRE_MULTINODE=1 but {reason}", pytrace=False)
    pytest.skip(f"multinode tier skipped: {reason} (CI sets REQUIRE_MULTINODE=1)")


def require_multinode() -> None:
    """Root, the tools, and base images on the engine of DOCKER_HOST to copy to the nodes (they have no
    route out: OFFLINE=1 builds from PYTHON_IMAGE and NGINX_IMAGE, as .ci/docker-engine.sh makes them)."""
    if os.geteuid() != 0:
        unavailable("it makes network namespaces and starts engines: run as root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = "iproute2 docker.io docker-registry curl"
        unavailable(f"{', '.join(missing)} not installed (apt-get install {packages})")
    images = [os.environ.get(name, "") for name in ("PYTHON_IMAGE", "NGINX_IMAGE")]
    if os.environ.get("OFFLINE") != "1" or not all(images):
        unavailable(
            "needs OFFLINE=1, PYTHON_IMAGE and NGINX_IMAGE on DOCKER_HOST's engine (.ci/docker-engine.sh)"
        )
    found = subprocess.run(["docker", "image", "inspect", *images], capture_output=True, text=True)
    if found.returncode != 0:
        unavailable(f"the engine of DOCKER_HOST has not got {' and '.join(images)}")


@dataclass(frozen=True)
class Nodes:
    """One set of nodes: its knobs (state dir, names, subnet, heartbeat) given to every nodes.sh call."""

    directory: Path
    prefix: str = "bpmt"
    net: str = "10.251.0"
    heartbeat: str = "2s"

    @property
    def knobs(self) -> dict[str, str]:
        return {
            "MULTINODE_DIR": str(self.directory),
            "MULTINODE_PREFIX": self.prefix,
            "MULTINODE_NET": self.net,
            "MULTINODE_HEARTBEAT": self.heartbeat,
        }

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(NODES_SH), *args],
            env={**os.environ, **self.knobs},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def must(self, *args: str, timeout: float = 180) -> str:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"nodes.sh {' '.join(args)}: {done.stderr.strip()}"
        return done.stdout

    def environment(self) -> dict[str, str]:
        """What `nodes.sh env` exports: DOCKER_HOST (the manager), RUNTIME, SWARM_*, DRILL_NODE_*."""
        exported = {}
        for line in self.must("env").splitlines():
            for word in shlex.split(line.removeprefix("export ")):
                name, _, value = word.partition("=")
                exported[name] = value
        return exported

    def host(self, n: int) -> str:
        return f"{self.prefix}{n}"

    def address(self, n: int) -> str:
        return f"{self.net}.1{n}"

    @property
    def client_address(self) -> str:
        return f"{self.net}.254"

    @property
    def registry(self) -> str:
        return f"{self.net}.1:5000"

    def socket(self, node: str) -> str:
        return f"unix://{self.directory}/{node}/docker.sock"

    def docker(self, node: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "-H", self.socket(node), *args], capture_output=True, text=True, timeout=timeout
        )

    def namespace(self, node: str, *command: str) -> subprocess.CompletedProcess[str]:
        """`ip -n NODE ...`: the node's network namespace."""
        return subprocess.run(["ip", "-n", node, *command], capture_output=True, text=True, timeout=30)


def host_snapshot(nodes: Nodes) -> dict[str, list[str]]:
    """What the nodes could leave on this host: their namespaces, links and routes of this namespace,
    mounts of /run/netns or under the state dir, processes started from the state dir, the nodes' cgroup
    directories, whether /run/netns is there and mounted, the state dir. Other engines on this host come
    and go with their own namespaces, links and mounts: only ours are compared."""

    def lines(*command: str) -> list[str]:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return sorted(done.stdout.splitlines())

    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{nodes.prefix}*"))
    processes = [
        line
        for line in lines("ps", "-eo", "pid=,args=")
        if str(nodes.directory) in line and "pytest" not in line
    ]
    return {
        "namespaces": [name for name in lines("ip", "netns", "list") if name.startswith(nodes.prefix)],
        "links": [
            name
            for line in lines("ip", "-o", "-br", "link")
            if (name := line.split()[0].split("@")[0]).startswith(nodes.prefix)
        ],
        "routes": [route for route in lines("ip", "route") if nodes.net in route],
        "mounts": sorted(
            m for m in mounts if m.startswith("/run/netns") or m.startswith(str(nodes.directory))
        ),
        "processes": processes,
        "cgroups": cgroups,
        "run netns": [str(Path("/run/netns").exists()), str(os.path.ismount("/run/netns"))],
        "state dir": [str(nodes.directory.exists())],
    }
