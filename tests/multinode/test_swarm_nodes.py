"""RUNTIME=swarm across three nodes, as a user with three machines runs it: `make up` with SWARM_REGISTRY
(images pushed by the manager, pulled by every node) and SWARM_NGINX_CONSTRAINT (nginx on the labelled edge
node), from this host, which reaches the nodes' subnet as a workstation would.

The nodes (tests/multinode/conftest.py) are made once; the tests run in file order on one stack: a node
that cannot pull named in one line; the deploy; answers from app tasks on every node through nginx on the
edge node's address; the client's own address at the app; the port listed once; a rolling update and a
scale-down 3 -> 1 under POST load with WebSockets held, losing nothing; `make down`; then `make drill
DRILL=node-loss` on a fresh stack; and last, `nodes.sh down` leaving the host as the tier found it.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from deploy.stackctl import stack as stackctl
from deploy.stackctl import swarm
from deploy.stackctl.config import ROOT
from loadtest.drill.load import EchoClients
from service.settings import Settings
from tests.support.docker import BUILD_TIMEOUT
from tests.support.multinode import Nodes, host_snapshot
from tests.support.wrk import OpenLoad, assert_nothing_lost

pytestmark = pytest.mark.multinode

HTTP_PORT = 18080
PROJECT = "blueprint-mn"
SUBNET = "172.28.240.0/24"  # the stack's overlay network: inside the nodes only
APP_TASKS = 3
WEBSOCKETS = 20
MIN_SECONDS = 12  # of load per operation at least
AFTER = 4  # seconds of load after the operation returned: the last stopped task's requests drain


@dataclass
class Cluster:
    """The stack on the nodes, driven through stackctl's command line with the environment `nodes.sh env`
    prints, as `make` would be."""

    nodes: Nodes
    env: dict[str, str]
    run_dir: Path

    def cli(self, *args: str, timeout: float = 600, **knobs: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "deploy.stackctl", "--run-dir", str(self.run_dir), *args]
        env = {**self.env, **knobs}
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    @property
    def edge(self) -> str:
        return self.nodes.address(2)

    @property
    def url(self) -> str:
        return f"http://{self.edge}:{HTTP_PORT}"

    @property
    def stack(self) -> swarm.Stack:
        return swarm.Stack(self.env)

    def running(self, service: str) -> list[swarm.Task]:
        return [t for t in self.stack.tasks() if t.service == service and t.desired == t.state == "running"]

    def service(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.stack.docker("service", "inspect", f"{PROJECT}_{name}"))
        return found[0]


def swarm_environment(nodes: Nodes, project: str) -> dict[str, str]:
    nofile = min(Settings().compose_nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    return {
        **stackctl.isolated_base(),  # build inputs stay: PYTHON_IMAGE, NGINX_IMAGE, OFFLINE=1
        **nodes.environment(),  # DOCKER_HOST (the manager), RUNTIME=swarm, SWARM_REGISTRY, ...
        "PROFILE": "default",
        "COMPOSE_PROJECT_NAME": project,
        "COMPOSE_SUBNET": SUBNET,
        "COMPOSE_NOFILE": str(nofile),
        "HTTP_PORT": str(HTTP_PORT),
        "SWARM_APP_REPLICAS": str(APP_TASKS),
        "WEB_CONCURRENCY": "1",
        # The WebSockets of a stopping task close within 2 s (default 10): the tests see them reconnect.
        "UVICORN_WS_CLOSE_SPREAD": "2",
        "GUNICORN_LOG_LEVEL": "warning",
        "APP_LOG_LEVEL": "warning",
    }


@pytest.fixture(scope="module")
def cluster(nodes: Nodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(nodes, swarm_environment(nodes, PROJECT), tmp_path_factory.mktemp("multinode"))
    try:
        yield made
    finally:
        if (nodes.directory / nodes.host(1) / "docker.sock").exists():
            made.cli("down", timeout=300)


def info(cluster: Cluster, **headers: str) -> dict[str, Any]:
    response = httpx2.get(f"{cluster.url}/api/info", headers=headers, timeout=10)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("stackctl ")]


def test_three_nodes_form_a_swarm_on_a_subnet_with_no_route_out(nodes: Nodes) -> None:
    listed = nodes.docker(nodes.host(1), "node", "ls", "--format", "{{.Hostname}} {{.Status}}")
    assert sorted(listed.stdout.splitlines()) == [f"{nodes.host(n)} Ready" for n in (1, 2, 3)]
    labels = nodes.docker(nodes.host(1), "node", "inspect", "-f", "{{json .Spec.Labels}}", nodes.host(2))
    assert json.loads(labels.stdout) == {"blueprint.edge": "true"}
    for n in (1, 2, 3):
        assert "default" not in nodes.namespace(nodes.host(n), "route").stdout
        unreachable = nodes.namespace(nodes.host(n), "route", "get", "192.0.2.1")
        assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr
    forwarding = subprocess.run(
        ["ip", "netns", "exec", f"{nodes.prefix}-hub", "cat", "/proc/sys/net/ipv4/ip_forward"],
        capture_output=True,
        text=True,
    )
    assert forwarding.stdout.strip() == "0", "the hub must not forward"


def test_a_node_that_cannot_pull_is_named_in_one_line_with_swarm_registry(
    nodes: Nodes, tmp_path: Path
) -> None:
    """A fresh stack while node 3 cannot reach the registry (a prohibit route): make up says which node and
    SWARM_REGISTRY at its first rejected task, instead of waiting for a stack that does not converge. It
    also builds and pushes the images the stack below deploys."""
    failing = Cluster(nodes, swarm_environment(nodes, "blueprint-mn-pull"), tmp_path)
    blocked = nodes.namespace(nodes.host(3), "route", "add", "prohibit", f"{nodes.net}.1/32")
    assert blocked.returncode == 0, blocked.stderr
    try:
        up = failing.cli("up", timeout=BUILD_TIMEOUT)
    finally:
        nodes.namespace(nodes.host(3), "route", "del", "prohibit", f"{nodes.net}.1/32")
        failing.cli("down", timeout=300)
    assert up.returncode != 0
    (line,) = error_lines(up)
    registry = f"{nodes.registry}/blueprint"
    assert f"node {nodes.host(3)} cannot run its task" in line, line
    assert f"could not pull it from SWARM_REGISTRY={registry}" in line, line


def test_make_up_pushes_every_node_pulls_and_it_waits_on_the_edge_node(cluster: Cluster) -> None:
    up = cluster.cli("up", timeout=BUILD_TIMEOUT)
    assert up.returncode == 0, up.stderr[-3000:]
    assert f"stack is up (swarm runtime, stack {PROJECT}, app x{APP_TASKS}): {cluster.url}" in up.stdout
    assert "pushing " in up.stdout
    catalog = httpx2.get(f"http://{cluster.nodes.registry}/v2/_catalog", timeout=10).json()
    assert {"blueprint/blueprint-app", "blueprint/blueprint-nginx"} <= set(catalog["repositories"])
    (nginx,) = cluster.running("nginx")
    assert nginx.node == cluster.nodes.host(2), "nginx runs on the labelled edge node only"
    for node in (cluster.nodes.host(2), cluster.nodes.host(3)):
        pulled = cluster.nodes.docker(node, "images", "--format", "{{.Repository}}").stdout.split()
        assert f"{cluster.nodes.registry}/blueprint/blueprint-app" in pulled, f"{node} has {pulled}"


def test_app_tasks_on_every_node_answer_through_nginx_on_the_edge(cluster: Cluster) -> None:
    tasks = cluster.running("app")
    assert sorted(t.node for t in tasks) == [cluster.nodes.host(n) for n in (1, 2, 3)]
    by_hostname = {host: task.node for task, host in zip(tasks, hostnames(cluster, tasks), strict=True)}
    seen = {info(cluster)["hostname"] for _ in range(6 * APP_TASKS)}
    assert seen == set(by_hostname), f"answered by {seen}, tasks {by_hostname}"
    assert {by_hostname[host] for host in seen} == {cluster.nodes.host(n) for n in (1, 2, 3)}


def hostnames(cluster: Cluster, tasks: list[swarm.Task]) -> list[str]:
    inspected = json.loads(cluster.stack.docker("inspect", *[t.id for t in tasks]))
    return [task["Status"]["ContainerStatus"]["ContainerID"][:12] for task in inspected]


def test_the_app_sees_the_clients_own_address(cluster: Cluster) -> None:
    """The nodes' engines keep iptables in their own namespaces, as on a real node: the host-mode port is
    DNAT'ed in the kernel and nginx sees this host's address (with --iptables=false, docker-proxy's)."""
    seen = info(cluster, **{"X-Forwarded-For": "203.0.113.7"})
    assert seen["client"] == cluster.nodes.client_address
    assert seen["x_forwarded_for"] == cluster.nodes.client_address


def test_make_ps_lists_nginx_and_its_port_once(cluster: Cluster) -> None:
    listed = cluster.cli("ps")
    assert listed.returncode == 0, listed.stderr
    port = f"*:{HTTP_PORT}->8080/tcp"
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("nginx.")]
    assert row.count(port) == 1 and cluster.nodes.host(2) in row, row
    assert listed.stdout.rstrip().endswith(f"nginx: {cluster.url}")
    # Docker lists it once per binding: IPv4 and, where the node can listen on IPv6, IPv6 (two here).
    raw = cluster.stack.docker("stack", "ps", PROJECT, "--filter", "desired-state=running")
    assert raw.count(port) in (1, 2), raw


class Held:
    """WebSockets on /ws/echo held through an operation, each echoing; each reconnects when closed."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.sockets = EchoClients(cluster.url.replace("http://", "ws://"), WEBSOCKETS)

    def __enter__(self) -> Held:
        self.sockets.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sockets.stop()

    def settle(self, within: float = 60) -> None:
        """Until the app's stopping tasks are gone (their WebSockets closed) and every client closed during
        the operation has connected again."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            stopping = [
                t
                for t in self.cluster.stack.tasks()
                if t.service == "app" and t.desired == "shutdown" and t.state == "running"
            ]
            reconnected = self.sockets.connects >= self.sockets.count + sum(self.sockets.closes.values())
            if not stopping and reconnected:
                return
            time.sleep(0.2)


def assert_sockets_kept(held: Held) -> None:
    tally = held.sockets.stop()
    print(f"WebSockets: {tally}")
    assert tally.failed_reconnects == {}, tally
    assert "1006" not in tally.closes, f"a WebSocket ended without a close frame: {tally}"
    assert tally.connects == tally.clients + sum(tally.closes.values()), "every close is reconnected"


def test_a_rolling_update_across_the_nodes_under_post_load_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    before = {t.id for t in cluster.running("app")}
    with Held(cluster) as held, OpenLoad(cluster.url, tmp_path) as load:
        load.at(3)
        reloaded = cluster.cli("reload", WEB_CONCURRENCY="2")
        load.at(max(MIN_SECONDS, time.monotonic() - load.started + AFTER))
        result = load.stop()
        held.settle()
    assert reloaded.returncode == 0, reloaded.stderr
    after = {t.id for t in cluster.running("app")}
    assert len(after) == APP_TASKS and not after & before, "the update did not replace every task"
    assert "WEB_CONCURRENCY=2" in cluster.service("app")["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    print(f"\nrolling update: {result['requests']} POST in {result['seconds']:.1f} s, {result['statuses']}")
    assert_nothing_lost(result)
    assert_sockets_kept(held)


def test_scale_down_3_to_1_under_post_load_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    assert len(cluster.running("app")) == APP_TASKS
    with Held(cluster) as held, OpenLoad(cluster.url, tmp_path) as load:
        load.at(3)
        scaled = cluster.cli("scale", "1")
        load.at(max(MIN_SECONDS, time.monotonic() - load.started + AFTER))
        result = load.stop()
        held.settle()
    assert scaled.returncode == 0, scaled.stderr
    assert len(cluster.running("app")) == 1
    print(f"\nscale 3 -> 1: {result['requests']} POST in {result['seconds']:.1f} s, {result['statuses']}")
    assert_nothing_lost(result)
    assert_sockets_kept(held)


def test_make_down_leaves_no_task_on_any_node(cluster: Cluster) -> None:
    """make down waits for what the manager sees (services, network, its own containers); the other nodes
    stop theirs on their own, within the stop grace period."""
    down = cluster.cli("down", timeout=300)
    assert down.returncode == 0, down.stderr
    assert "the other nodes stop theirs within COMPOSE_STOP_GRACE_PERIOD" in down.stdout
    label = f"label=com.docker.stack.namespace={PROJECT}"
    deadline = time.monotonic() + Settings().compose_stop_grace_period + 5
    for n in (1, 2, 3):
        while True:
            left = cluster.nodes.docker(cluster.nodes.host(n), "ps", "-aq", "--filter", label).stdout.split()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert left == [], f"{cluster.nodes.host(n)} keeps {left}"


def test_node_loss_drill_reschedules_and_loses_at_most_what_was_in_flight(
    nodes: Nodes, tmp_path: Path
) -> None:
    env = {**swarm_environment(nodes, PROJECT), "DRILL_WEBSOCKETS": str(WEBSOCKETS)}
    for knob in ("COMPOSE_PROJECT_NAME", "COMPOSE_SUBNET", "HTTP_PORT", "SWARM_APP_REPLICAS"):
        env.pop(knob)  # the drill's own
    command = [sys.executable, "-m", "loadtest.drill", "--drill", "node-loss", "--short", "--out-root"]
    done = subprocess.run(
        [*command, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    (report,) = tmp_path.glob("drill-*/drill.json")
    (row,) = json.loads(report.read_text())["rows"]
    shown = ("rate", "failures", "lost", "allowed", "probe_failures", "timeline", "notes", "ws_closes")
    shown += ("ws_failed_by_reason", "ws_wrong_echoes", "rooms", "rooms_allowed")
    said = json.dumps({k: row[k] for k in ("reason", *shown)})
    print(f"\nnode-loss: {said}")
    assert row["status"] == "passed", f"{row['status']}: {said}"
    assert done.returncode == 0, done.stderr[-2000:]
    assert row["lost"] <= row["allowed"] == 32
    timeline = row["timeline"]
    assert 0 < timeline["node marked down"] <= timeline["app tasks rescheduled"]
    assert row["recovery_s"] == pytest.approx(timeline["app tasks rescheduled"], abs=0.1)
    assert timeline.get("nginx's last request to a lost task", 0) < timeline["app tasks rescheduled"]
    assert row["ws_failed_reconnects"] == 0
    placement = re.compile(r"(\S+) \(.*; redis on (.+) when it went")
    (victim, redis), *_ = (found.groups() for note in row["notes"] if (found := placement.match(note)))
    assert victim not in redis.split(", "), "node-loss moves the rooms' Redis off the node it loses first"
    listed = nodes.docker(nodes.host(1), "node", "ls", "--format", "{{.Status}}")
    assert listed.stdout.split() == ["Ready"] * 3, "DRILL_NODE_UP brought the node back"


def test_nodes_down_leaves_the_host_as_the_tier_found_it(
    nodes: Nodes, host_before: dict[str, list[str]]
) -> None:
    nodes.must("down", timeout=300)
    assert host_snapshot(nodes) == host_before
    again = nodes.run("down")
    assert again.returncode == 0, f"a second down must do nothing: {again.stderr}"
