"""MONITORING=1 on the local runtime, through the command line as `make up` runs it: Debian's prometheus and
prometheus-nginx-exporter start beside gunicorn and nginx, Prometheus scrapes the app (through nginx's status
port) and nginx (through the exporter), evaluates deploy/prometheus/rules.yml, a reload re-reads its config,
and `make down` leaves no process and no port behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest

from deploy.stackctl.ports import LOOPBACK, port_in_use
from tests.support.stack import make_stack

pytestmark = pytest.mark.stack


def processes_of(run_dir: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]


def api(prometheus: str, path: str, **params: str) -> Any:
    answer = httpx2.get(f"{prometheus}/api/v1/{path}", params=params, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def eventually(check: Any, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_make_up_with_monitoring_scrapes_the_app_and_nginx_and_down_leaves_nothing(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, WEB_CONCURRENCY="2", MONITORING="1", PROMETHEUS_SCRAPE_INTERVAL="1")
    prometheus = f"http://{LOOPBACK}:{stack.env['PROMETHEUS_PORT']}"
    up = stack.stackctl("up")
    try:
        assert up.returncode == 0, up.stderr
        assert f"Prometheus (MONITORING=1): {prometheus}" in up.stdout
        listed = stack.stackctl("ps").stdout
        assert " prometheus " in listed and " nginx-exporter " in listed

        def healthy_targets() -> dict[str, str]:
            targets = api(prometheus, "targets")["activeTargets"]
            found = {t["labels"]["job"]: t["health"] for t in targets}
            return found if found == {"app": "up", "nginx": "up", "prometheus": "up"} else {}

        assert eventually(healthy_targets), api(prometheus, "targets")["activeTargets"]
        for _ in range(7):
            assert httpx2.get(f"{stack.url}/api/ping").status_code == 200

        def pings() -> float:
            query = 'sum(app_requests_total{route="/api/ping",status="200"})'
            result = api(prometheus, "query", query=query)["result"]
            return float(result[0]["value"][1]) if result else 0.0

        assert eventually(lambda: pings() >= 7) and pings() == 7
        requests = api(prometheus, "query", query="nginx_http_requests_total")["result"]
        assert requests and float(requests[0]["value"][1]) >= 7, "nginx counted them too, via the exporter"

        groups = {g["name"]: g["rules"] for g in api(prometheus, "rules")["groups"]}
        assert set(groups) == {"blueprint-recording", "blueprint-alerts"}
        assert all(rule["health"] in ("ok", "unknown") for rules in groups.values() for rule in rules)

        reloaded = stack.stackctl("reload")  # Prometheus gets HUP: it re-reads its config and the rules
        assert reloaded.returncode == 0, reloaded.stderr
        assert eventually(healthy_targets)
        refused = stack.stackctl("reload", MONITORING="0")
        assert refused.returncode == 1
        assert "MONITORING=0" in refused.stderr and "make down && make up" in refused.stderr
    finally:
        down = stack.stackctl("down")
    assert down.returncode == 0, down.stderr
    assert "prometheus" in down.stdout and "nginx-exporter" in down.stdout
    assert processes_of(stack.run_dir.resolve()) == []
    for knob in ("HTTP_PORT", "NGINX_STATUS_PORT", "PROMETHEUS_PORT", "PROMETHEUS_NGINX_EXPORTER_PORT"):
        assert not port_in_use(LOOPBACK, int(stack.env[knob])), knob
