"""The compose stack on a real engine: the local tier's through-nginx assertions, then what only
containers have — users, read-only roots, published ports, health, replicas, recreation, graceful stop.

The tests run in file order and share one stack; the last one stops it.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import psutil
import pytest

from loadtest.drill.load import EchoClients
from loadtest.rooms import Member
from service.settings import Settings
from tests.docker.stack_series import assert_series_sane, sampled_while_a_worker_is_killed
from tests.docker.through_nginx import *  # noqa: F403 (the runtime-independent tests, on the compose stack)
from tests.support.docker import DockerStack, docker
from tests.support.wrk import Wrk, assert_nothing_lost

pytestmark = pytest.mark.docker


def info(stack: DockerStack, **headers: str) -> dict[str, Any]:
    response = httpx2.get(f"{stack.url}/api/info", headers=headers, timeout=10)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def test_spoofed_x_forwarded_for_is_replaced_by_the_peer_nginx_saw(docker_stack: DockerStack) -> None:
    seen = info(docker_stack, **{"X-Forwarded-For": "203.0.113.7"})
    # Published ports reach nginx through Docker's proxy, from the network's gateway: inside the subnet the
    # app trusts, and never the address the client claimed.
    assert seen["client"] != "203.0.113.7"
    assert ipaddress.ip_address(seen["client"]) in docker_stack.subnet
    assert seen["x_forwarded_for"] == seen["client"]


def test_metrics_are_not_public_but_the_network_can_scrape_them(docker_stack: DockerStack) -> None:
    response = httpx2.get(f"{docker_stack.url}/metrics")
    assert response.status_code == 404
    assert response.json()["layer"] == "nginx"
    app = docker_stack.containers("app")[0]
    scrape = docker_stack.exec(
        app,
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://app:8000/metrics').read().decode())",
    )
    assert scrape.returncode == 0, scrape.stderr
    assert "app_requests_total" in scrape.stdout


def test_every_container_process_runs_as_a_non_root_user(docker_stack: DockerStack) -> None:
    containers = docker_stack.containers()
    services = {c["Config"]["Labels"]["com.docker.compose.service"] for c in containers}
    assert services == {"app", "nginx", "redis"}
    for container in containers:
        main = psutil.Process(container["State"]["Pid"])
        processes = [main, *main.children(recursive=True)]
        alone = container["Config"]["Labels"]["com.docker.compose.service"] == "redis"  # one process
        assert len(processes) >= (1 if alone else 2), f"{container['Name']}: expected a master and workers"
        for process in processes:
            assert process.uids().real != 0 and process.uids().effective != 0, (
                f"{container['Name']}: {process.name()} (pid {process.pid}) runs as root"
            )


def test_root_filesystems_are_read_only(docker_stack: DockerStack) -> None:
    for container in docker_stack.containers():
        assert container["HostConfig"]["ReadonlyRootfs"] is True
        # Even root inside the container cannot write: the filesystem, not a permission, refuses.
        attempt = docker_stack.exec(container, "sh", "-c", "echo x > /probe", user="0")
        assert attempt.returncode != 0
        assert "Read-only file system" in attempt.stderr
        writable = docker_stack.exec(container, "sh", "-c", "echo x > /tmp/probe && rm /tmp/probe")
        assert writable.returncode == 0, f"{container['Name']}: /tmp tmpfs not writable: {writable.stderr}"


def test_only_nginx_publishes_a_port_on_loopback(docker_stack: DockerStack) -> None:
    for container in docker_stack.containers():
        bindings = {port: hosts for port, hosts in container["NetworkSettings"]["Ports"].items() if hosts}
        if container["Config"]["Labels"]["com.docker.compose.service"] in ("app", "redis"):
            assert bindings == {}, f"{container['Name']} publishes {bindings}"
        else:
            assert bindings == {
                "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": docker_stack.env["HTTP_PORT"]}]
            }


def test_containers_are_hardened_and_sized_for_many_connections(docker_stack: DockerStack) -> None:
    for container in docker_stack.containers():
        host = container["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        limits = docker_stack.exec(container, "cat", "/proc/1/limits").stdout
        assert f"Max open files            {docker_stack.env['COMPOSE_NOFILE']}" in limits
        somaxconn = docker_stack.exec(container, "cat", "/proc/sys/net/core/somaxconn").stdout.strip()
        assert somaxconn == str(Settings().compose_somaxconn)


def test_all_services_report_healthy(docker_stack: DockerStack) -> None:
    states = {c["Name"]: c["State"]["Health"]["Status"] for c in docker_stack.containers()}
    assert states and set(states.values()) == {"healthy"}, states


def hostnames_serving(stack: DockerStack, requests: int) -> set[str]:
    return {info(stack)["hostname"] for _ in range(requests)}


def test_reload_replaces_gunicorn_workers_and_keeps_serving(docker_stack: DockerStack) -> None:
    before = httpx2.get(f"{docker_stack.url}/api/ping").json()["pid"]
    reloaded = docker_stack.stackctl("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    deadline = time.monotonic() + 30
    while (after := httpx2.get(f"{docker_stack.url}/api/ping").json()["pid"]) == before:
        assert time.monotonic() < deadline, "gunicorn kept its old worker after HUP"
        time.sleep(0.2)
    assert after != before


def test_a_room_spans_two_app_containers(docker_stack: DockerStack) -> None:
    """Members through nginx land on both containers (nginx spreads new connections round-robin); each
    message, published through whichever container, reaches every member, through the redis service."""
    scaled = docker_stack.stackctl("scale", "2")
    assert scaled.returncode == 0, scaled.stderr
    apps = {container_address(c) for c in docker_stack.containers("app")}
    stop = threading.Event()
    members = [Member(docker_stack.ws_url, "across", stop, f"m{n}") for n in range(8)]
    for member in members:
        member.start()
        assert member.connected.wait(15)
    (redis,) = docker_stack.containers("redis")
    listed = docker_stack.exec(redis, "redis-cli", "client", "list").stdout.split("\n")
    readers = {line.split(" addr=")[1].split(":")[0] for line in listed if " name=rooms-" in line}
    ids = []
    with httpx2.Client(base_url=docker_stack.url, timeout=10) as client:
        for n in range(20):
            answer = client.post("/api/rooms/across/messages", json={"data": {"n": n, "t": time.time()}})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
    deadline = time.monotonic() + 15
    while any(len(m.ids) < len(ids) for m in members) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for member in members:
        member.join(timeout=10)
    assert readers == apps, "both app containers joined members to the room (their Redis connections)"
    assert all(member.ids == ids for member in members), [len(m.ids) for m in members]


def nginx_said(stack: DockerStack, since: float) -> str:
    """nginx's error lines and the access lines of its failed answers since `since`: which upstream, which
    error (refused, reset, closed early), for a failure's message."""
    logs = docker("logs", "--since", str(int(since)), stack.containers("nginx")[0]["Id"], env=stack.env)
    lines = (logs.stdout + logs.stderr).splitlines()
    said = [line for line in lines if "[error]" in line or "[warn]" in line or '"status":50' in line]
    return "\nnginx said:\n" + "\n".join(said[-40:])


def test_scale_to_three_serves_from_all_then_to_one_under_post_load_loses_nothing(
    docker_stack: DockerStack, tmp_path: Path
) -> None:
    # Up: make scale returns once nginx sends requests to every replica. Down, 3 -> 1 while wrk POSTs
    # through nginx: each stopping container drains (stops accepting, answers with Connection: close,
    # closes its WebSockets with 1012) and nginx follows the addresses by itself, with no reload that would
    # close idle client keep-alive connections. A 502, a socket error or a rate below 1,000 requests/s fails.
    scaled_up = docker_stack.stackctl("scale", "3")
    assert scaled_up.returncode == 0, scaled_up.stderr
    replicas = {c["Config"]["Hostname"] for c in docker_stack.containers("app")}
    assert len(replicas) == 3
    assert hostnames_serving(docker_stack, 30) == replicas
    # nginx spreads new connections round-robin: most of the 12 land on the two containers that go
    sockets = EchoClients(docker_stack.ws_url, 12)
    sockets.start()
    try:
        # straight to nginx's address on the compose network: Docker's userland proxy behind the published
        # port is the bottleneck on a busy 2-core machine, and the claim is about nginx and the app
        nginx = SimpleNamespace(url=f"http://{container_address(docker_stack.containers('nginx')[0])}:8080")
        wrk = Wrk(nginx, tmp_path, host="localhost")  # an address nginx answers with 421
        started = time.time()
        wrk.at(3.0)
        scaled_down = docker_stack.stackctl("scale", "1")  # returns once nginx balances over the one left
        result = wrk.result()
        deadline = time.monotonic() + 10
        while sockets.connects < sockets.count + sum(sockets.closes.values()) and time.monotonic() < deadline:
            time.sleep(0.1)  # the last clients closed are reconnecting
    finally:
        held = sockets.stop()
    assert scaled_down.returncode == 0, scaled_down.stderr
    assert len(docker_stack.containers("app")) == 1
    if result["non_2xx_3xx"] or result["read"] or result["write"]:
        result["output"] += nginx_said(docker_stack, since=started)
    assert_nothing_lost(result)
    assert held.failed_reconnects == {}, held
    assert held.closes and set(held.closes) == {"1012"}, held
    assert held.connects == held.clients + sum(held.closes.values()), "every close is followed by a reconnect"


def test_the_sampler_reads_each_app_container_and_sees_a_killed_worker_end_and_its_replacement(
    docker_stack: DockerStack, tmp_path: Path
) -> None:
    """The stack series of `make loadtest` on the docker runtime: the sampler's agents in two app
    containers (one worker each), nginx's stub_status through one of them, its access lines from
    `docker logs`; a worker SIGKILLed inside its container ends as `crash` and gunicorn's new one starts."""
    assert docker_stack.handle is not None
    scaled = docker_stack.stackctl("scale", "2")
    assert scaled.returncode == 0, scaled.stderr
    try:
        instances = sorted(c["Name"].lstrip("/") for c in docker_stack.containers("app"))
        assert len(instances) == 2
        samples, killed = sampled_while_a_worker_is_killed(
            docker_stack.handle, docker_stack.env, instances, tmp_path
        )
        assert_series_sane(samples, instances, killed)
    finally:
        assert docker_stack.stackctl("scale", "1").returncode == 0


def container_address(container: dict[str, Any]) -> str:
    return str(next(iter(container["NetworkSettings"]["Networks"].values()))["IPAddress"])


def test_recreated_app_with_a_new_address_is_served_without_restarting_nginx(
    docker_stack: DockerStack,
) -> None:
    nginx_started = docker_stack.containers("nginx")[0]["State"]["StartedAt"]
    old = docker_stack.containers("app")[0]
    old_address = container_address(old)
    assert docker_stack.compose("rm", "-sf", "app").returncode == 0
    # Hold the old address with a container that does not listen, so the new app gets another one: an
    # nginx that pinned the old address would now answer 502 forever.
    network = next(iter(old["NetworkSettings"]["Networks"]))
    squatter = f"{docker_stack.project}-squatter"
    held = docker_stack_run(docker_stack, squatter, network, old_address)
    try:
        recreated = docker_stack.compose("up", "-d", "--no-deps", "--force-recreate", "app")
        assert recreated.returncode == 0, recreated.stderr
        new = wait_for_healthy_app(docker_stack)
        assert container_address(new) != old_address
        deadline = time.monotonic() + 20  # the entrypoint re-resolves every 2 s
        while httpx2.get(f"{docker_stack.url}/api/ping", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "nginx still sends to the old app address"
            time.sleep(0.2)
        statuses = [httpx2.get(f"{docker_stack.url}/api/ping", timeout=10).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert info(docker_stack)["hostname"] == new["Config"]["Hostname"]
        assert docker_stack.containers("nginx")[0]["State"]["StartedAt"] == nginx_started
    finally:
        if held:
            docker_stack_rm(docker_stack, squatter)


def docker_stack_run(stack: DockerStack, name: str, network: str, address: str) -> bool:
    started = docker(
        "run", "-d", "--rm", "--name", name, "--network", network, "--ip", address, "--entrypoint", "sleep",
        "blueprint-nginx:local", "300", env=stack.env,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    return True


def docker_stack_rm(stack: DockerStack, name: str) -> None:
    docker("rm", "-f", name, env=stack.env)


def wait_for_healthy_app(stack: DockerStack) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        apps = stack.containers("app")
        if apps and apps[0]["State"].get("Health", {}).get("Status") == "healthy":
            return apps[0]
        time.sleep(0.5)
    raise AssertionError("the recreated app container did not become healthy within 90 s")


def test_locust_master_and_worker_run_against_nginx(docker_stack: DockerStack) -> None:
    started = docker_stack.compose(
        "--profile", "loadtest", "up", "-d", "--no-build", "locust-master", "locust-worker"
    )
    assert started.returncode == 0, started.stderr
    web = f"http://127.0.0.1:{docker_stack.env['LOCUST_WEB_PORT']}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx2.get(f"{web}/worker-count", timeout=5).json()["worker_count"] == 1:
                    break
            except (httpx2.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, "the Locust worker did not connect to the master"
            time.sleep(1)
        swarm = httpx2.post(f"{web}/swarm", data={"user_count": 2, "spawn_rate": 2}, timeout=10)
        assert swarm.status_code == 200, swarm.text
        deadline = time.monotonic() + 60
        while True:
            requests = sum(
                row["num_requests"]
                for row in httpx2.get(f"{web}/stats/requests", timeout=5).json()["stats"]
                if row["name"] != "Aggregated"
            )
            if requests > 0:
                break
            assert time.monotonic() < deadline, "Locust sent no request through nginx"
            time.sleep(1)
        assert httpx2.post(f"{web}/stop", timeout=10).status_code == 200
    finally:
        docker_stack.compose("--profile", "loadtest", "rm", "-sf", "locust-master", "locust-worker")


def test_compose_stop_lets_in_flight_requests_finish_and_the_app_exits_0(docker_stack: DockerStack) -> None:
    app = docker_stack.containers("app")[0]
    results: list[int] = []

    def slow_request() -> None:
        results.append(
            httpx2.get(f"{docker_stack.url}/api/slow", params={"delay": 1.5}, timeout=60).status_code
        )

    threads = [threading.Thread(target=slow_request) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    stopped = docker_stack.compose("stop", timeout=120)
    for thread in threads:
        thread.join()
    assert stopped.returncode == 0, stopped.stderr
    assert results == [200] * 5
    exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", app["Id"], env=docker_stack.env).stdout.strip()
    assert exit_code == "0", f"the app exited with {exit_code} (137 = SIGKILLed before it finished)"
