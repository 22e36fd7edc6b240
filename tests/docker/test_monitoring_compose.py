"""MONITORING=1 on the docker runtime (the compose profile `monitoring`), through the command line as
`make up` runs it: Prometheus and the exporter start beside the stack, Prometheus finds every app replica
by DNS and nginx through the exporter, keeps nothing outside its container, and `make down` removes them.

A project of its own (the tier's shared stack runs without monitoring); the tests run in file order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.docker import BUILD_TIMEOUT, DockerStack, docker, require_engine, stack_environment

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerStack]:
    require_engine()
    stack = DockerStack({**stack_environment(), "MONITORING": "1", "PROMETHEUS_SCRAPE_INTERVAL": "1"})
    built = stack.stackctl("images", timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, f"building the images failed: {built.stderr[-3000:]}"
    run_dir = tmp_path_factory.mktemp("monitored")
    stack.env["TEST_RUN_DIR"] = str(run_dir)
    try:
        up = stack.stackctl("--run-dir", str(run_dir), "up", timeout=BUILD_TIMEOUT)
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"Prometheus (MONITORING=1): http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}" in up.stdout
        yield stack
    finally:
        stack.compose(
            "--profile", "loadtest", "--profile", "monitoring", "down", "--remove-orphans", "-t", "5"
        )


def prometheus(stack: DockerStack) -> str:
    return f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"


def api(stack: DockerStack, path: str, **params: str) -> Any:
    answer = httpx2.get(f"{prometheus(stack)}/api/v1/{path}", params=params, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def eventually(check: Any, within: float = 60.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_prometheus_scrapes_every_app_replica_by_dns_and_nginx_through_the_exporter(
    monitored: DockerStack,
) -> None:
    scaled = monitored.stackctl("--run-dir", monitored.env["TEST_RUN_DIR"], "scale", "2")
    assert scaled.returncode == 0, scaled.stderr[-2000:]
    apps = {c["Config"]["Hostname"] for c in monitored.containers("app")}
    assert len(apps) == 2

    def targets() -> list[tuple[str, str]]:
        active = api(monitored, "targets")["activeTargets"]
        found = sorted((t["labels"]["job"], t["health"]) for t in active)
        wanted = [("app", "up"), ("app", "up"), ("nginx", "up"), ("prometheus", "up")]
        return found if found == wanted else []

    assert eventually(targets), api(monitored, "targets")["activeTargets"]
    for _ in range(40):
        assert httpx2.get(f"{monitored.url}/api/ping", timeout=10).status_code == 200

    def per_replica() -> dict[str, float]:
        query = 'sum by (instance) (app_requests_total{route="/api/ping"})'
        found = {
            r["metric"]["instance"]: float(r["value"][1])
            for r in api(monitored, "query", query=query)["result"]
        }
        return found if len(found) == 2 and sum(found.values()) == 40 else {}

    assert eventually(per_replica), "each replica scraped on its own, nginx spread the requests over both"
    up = api(monitored, "query", query="nginx_up")["result"]
    assert [r["value"][1] for r in up] == ["1"], "the exporter reads nginx's stub_status"
    groups = {g["name"] for g in api(monitored, "rules")["groups"]}
    assert groups == {"blueprint-recording", "blueprint-alerts"}


def test_prometheus_is_hardened_and_keeps_nothing_outside_its_container(monitored: DockerStack) -> None:
    for service in ("prometheus", "nginx-exporter"):
        (container,) = monitored.containers(service)
        assert container["HostConfig"]["ReadonlyRootfs"] is True
        assert container["Config"]["User"] == "65534:65534"
        assert container["Mounts"] == [], f"{service}: no volume, its data lives and dies with it"
    (container,) = monitored.containers("prometheus")
    assert "/prometheus" in container["HostConfig"]["Tmpfs"]
    ports = container["HostConfig"]["PortBindings"]["9090/tcp"]
    assert ports == [{"HostIp": "127.0.0.1", "HostPort": monitored.env["PROMETHEUS_PORT"]}]


def test_make_down_removes_prometheus_and_the_exporter_too(monitored: DockerStack) -> None:
    down = monitored.stackctl("--run-dir", monitored.env["TEST_RUN_DIR"], "down")
    assert down.returncode == 0, down.stderr
    label = f"label=com.docker.compose.project={monitored.project}"
    assert docker("ps", "-aq", "--filter", label, env=monitored.env).stdout.split() == []
