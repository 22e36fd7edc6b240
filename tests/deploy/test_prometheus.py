"""deploy/prometheus/ without a running stack: every rule's unit test (`promtool test rules`), the config each
runtime renders (`promtool check config`, which also checks the rules it names), the image's entrypoint
rendering what stackctl renders, and MONITORING=1 in compose's and swarm's rendered config."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.stackctl import check, docker, monitoring, swarm
from deploy.stackctl.config import KNOBS, ROOT, Effective, dump, effective
from deploy.stackctl.tools import find_promtool
from service.settings import load_settings

ENTRYPOINT = monitoring.PROMETHEUS_DIR / "entrypoint.sh"
DOCKERFILE = ROOT / "deploy" / "Dockerfile.prometheus"
IMAGE_RULES = "/etc/blueprint/prometheus/rules.yml"
RULE_TESTS = sorted(monitoring.RULE_TESTS.glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_promtool(), *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(monitoring.RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def config_of(**knobs: str) -> Effective:
    return effective({"PROFILE": "default", **knobs}, env_file=None)


def test_every_rule_has_a_unit_test_that_sees_it_fire_or_checks_its_value() -> None:
    fired: set[str] = set()
    evaluated: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
            evaluated |= {t["expr"] for t in case.get("promql_expr_test", []) if t.get("exp_samples")}
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    records = {rule["record"] for rule in rules() if "record" in rule}
    assert alerts and records
    assert alerts - fired == set(), "alerts no test sees firing"
    assert records - evaluated == set(), "recording rules no test evaluates"


def test_promtool_passes_every_rule_unit_test() -> None:
    checked = promtool("check", "rules", str(monitoring.RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", *map(str, RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_the_local_runtimes_config_scrapes_loopback_and_passes_promtool(tmp_path: Path) -> None:
    settings = load_settings(
        nginx_status_port=18081, prometheus_nginx_exporter_port=19113, prometheus_port=19090
    )
    rendered = monitoring.render(settings, monitoring.local_scrape(settings))
    config = yaml.safe_load(rendered)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["app"]["static_configs"] == [{"targets": ["127.0.0.1:18081"]}]  # nginx's status port
    assert jobs["app"]["metrics_path"] == "/metrics" and "dns_sd_configs" not in jobs["app"]
    assert jobs["nginx"]["static_configs"] == [{"targets": ["127.0.0.1:19113"]}]
    assert config["rule_files"] == [str(monitoring.RULES)]
    (tmp_path / "prometheus.yml").write_text(rendered)
    monitoring.check_config(find_promtool(), tmp_path / "prometheus.yml")


def compose_config(*files: Path, **knobs: str) -> dict[str, Any]:
    """`compose config` of these files with MONITORING=1's profile, with the knobs' values as make up sets."""
    config = config_of(MONITORING="1", **knobs)
    env = {**os.environ, **{name: dump(config.settings, name) for name in KNOBS}}
    command = [
        *docker.compose_command(),
        *(a for f in files for a in ("-f", str(f))),
        *docker.profiles(config.settings),
    ]
    result = subprocess.run(
        [*command, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def image_environment() -> dict[str, str]:
    """The ENV lines of deploy/Dockerfile.prometheus."""
    block = re.search(r"^ENV (.*?)\n(?!\s)", DOCKERFILE.read_text(), re.MULTILINE | re.DOTALL)
    assert block is not None
    return dict(re.findall(r"([A-Z_]+)=(\S+)", block.group(1)))


def entrypoint_render(environment: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        **image_environment(),
        **{k: str(v) for k, v in environment.items()},
        "BLUEPRINT_TEMPLATE": str(monitoring.TEMPLATE),
    }
    return subprocess.run(["/bin/sh", str(ENTRYPOINT), "render"], env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("overlay", "app", "port", "path"),
    [(None, "app", 8000, "/stats"), (docker.UNIX_OVERLAY, "nginx", 8081, "/metrics")],
    ids=["compose", "compose-unix-bind"],
)
def test_the_image_renders_from_composes_environment_what_stackctl_renders(
    tmp_path: Path, overlay: Path | None, app: str, port: int, path: str
) -> None:
    knobs = {"APP_METRICS_PATH": "/stats", "PROMETHEUS_SCRAPE_INTERVAL": "2"}
    files = [docker.COMPOSE_FILE, *([overlay] if overlay else [])]
    environment = compose_config(*files, **knobs)["services"]["prometheus"]["environment"]
    rendered = entrypoint_render(environment)
    assert rendered.returncode == 0, rendered.stderr

    settings = config_of(**knobs).settings
    scrape = monitoring.container_scrape(settings, app=app, rules=Path(IMAGE_RULES))
    expected = monitoring.render(
        settings, scrape.__class__(**{**scrape.__dict__, "app_port": port, "app_path": path})
    )
    assert rendered.stdout == expected
    jobs = {job["job_name"]: job for job in yaml.safe_load(rendered.stdout)["scrape_configs"]}
    assert jobs["app"]["dns_sd_configs"] == [
        {"names": [app], "type": "A", "port": port, "refresh_interval": "5s"}
    ], "every replica by DNS"
    # promtool checks the rules it names too: point it at the repository's copy.
    checked = tmp_path / "prometheus.yml"
    checked.write_text(rendered.stdout.replace(IMAGE_RULES, str(monitoring.RULES)))
    monitoring.check_config(find_promtool(), checked)


def test_the_entrypoint_names_a_variable_compose_did_not_set() -> None:
    rendered = entrypoint_render({"PROMETHEUS_SCRAPE_INTERVAL": "5"})
    assert rendered.returncode == 1
    assert rendered.stderr.strip().splitlines() == [
        f"blueprint-prometheus: BLUEPRINT_SCRAPE_APP_PATH is not set ({monitoring.TEMPLATE} uses it)"
    ]


def test_compose_runs_prometheus_and_the_exporter_only_with_monitoring() -> None:
    services = compose_config(docker.COMPOSE_FILE, NGINX_STATUS_PORT="8181", PROMETHEUS_PORT="19090")[
        "services"
    ]
    prometheus, exporter = services["prometheus"], services["nginx-exporter"]
    (published,) = prometheus["ports"]  # compose v2 writes a mapping, 1.29 a string
    if isinstance(published, dict):
        published = f"{published['host_ip']}:{published['published']}:{published['target']}"
    assert published.startswith("127.0.0.1:19090:9090"), "loopback only, like Locust's UI"
    assert "--nginx.scrape-uri=http://nginx:8181/stub_status" in exporter["command"]
    assert exporter["depends_on"]["nginx"]["condition"] == "service_healthy"
    assert docker.profiles(config_of().settings) == ()  # MONITORING=0: neither service is started
    assert set(docker.MONITORING_SERVICES) == {"prometheus", "nginx-exporter"}


def test_swarm_adds_the_two_services_with_monitoring_and_publishes_no_prometheus() -> None:
    config = config_of(MONITORING="1")
    env = {**os.environ, **{name: dump(config.settings, name) for name in KNOBS}}
    stack, _ = swarm.stack_file(swarm.rendered_config(config, env, locust=False), config)
    prometheus = stack["services"]["prometheus"]
    assert "ports" not in prometheus and "profiles" not in prometheus
    assert prometheus["environment"]["BLUEPRINT_SCRAPE_APP"] == "tasks.app"
    assert {"type": "tmpfs", "target": "/prometheus", "tmpfs": {"size": 512 << 20}} in prometheus["volumes"]
    assert stack["services"]["nginx-exporter"]["deploy"]["replicas"] == 1

    off = config_of()
    env = {**os.environ, **{name: dump(off.settings, name) for name in KNOBS}}
    stack, _ = swarm.stack_file(swarm.rendered_config(off, env, locust=False), off)
    assert not set(docker.MONITORING_SERVICES) & set(stack["services"])


def test_make_check_runs_promtool_with_monitoring_only() -> None:
    verdict = check.validate_prometheus(config_of(MONITORING="1"))
    assert (verdict.status, verdict.command) == ("ok", "promtool check config"), verdict.detail
