"""Prometheus beside the stack (MONITORING=1): its config, rendered from
deploy/prometheus/prometheus.yml.template for where it runs, and checked with promtool (the config and the
rules it names).

The local runtime renders it here (components.py: the `prometheus` and `nginx-exporter` components); the
Prometheus image renders the same template in its entrypoint (deploy/prometheus/entrypoint.sh) from the
container's environment, with the `dns` lines instead of the `static` ones.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deploy.stackctl.config import CONDITIONAL_LINE, ROOT
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import LOOPBACK
from service.settings import ConfigError, Settings

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
TEMPLATE = PROMETHEUS_DIR / "prometheus.yml.template"
RULES = PROMETHEUS_DIR / "rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests"
VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
Where = Literal["static", "dns"]
# Inside the containers (docker-compose.yml, deploy/swarm.yml): the app's port, the exporter's, Prometheus's.
CONTAINER_APP_PORT = 8000
CONTAINER_EXPORTER = "nginx-exporter:9113"
CONTAINER_PROMETHEUS_PORT = 9090


@dataclass(frozen=True)
class Scrape:
    """What Prometheus scrapes where it runs: the template's BLUEPRINT_* values and which lines it keeps."""

    where: Where
    app: str  # the host (local) or DNS name (containers) that serves the app's metrics
    app_port: int
    app_path: str
    exporter: str  # host:port
    itself: str  # host:port
    rules: Path

    def variables(self, settings: Settings) -> dict[str, str]:
        return {
            "PROMETHEUS_SCRAPE_INTERVAL": str(settings.prometheus_scrape_interval),
            "BLUEPRINT_SCRAPE_APP": self.app,
            "BLUEPRINT_SCRAPE_APP_PORT": str(self.app_port),
            "BLUEPRINT_SCRAPE_APP_PATH": self.app_path,
            "BLUEPRINT_SCRAPE_EXPORTER": self.exporter,
            "BLUEPRINT_SCRAPE_SELF": self.itself,
            "BLUEPRINT_RULES": str(self.rules),
        }


def local_scrape(settings: Settings) -> Scrape:
    """Processes of this host: the app through nginx's status port, whose /metrics sums every worker (and
    works with a unix GUNICORN_BIND, which Prometheus could not scrape)."""
    return Scrape(
        where="static",
        app=LOOPBACK,
        app_port=settings.nginx_status_port,
        app_path="/metrics",  # nginx's location; it asks the app for APP_METRICS_PATH
        exporter=f"{LOOPBACK}:{settings.prometheus_nginx_exporter_port}",
        itself=f"{LOOPBACK}:{settings.prometheus_port}",
        rules=RULES,
    )


def container_scrape(settings: Settings, app: str = "app", rules: Path = RULES) -> Scrape:
    """What the image's entrypoint renders (`app`: compose's service name; swarm's is `tasks.app`)."""
    return Scrape(
        where="dns",
        app=app,
        app_port=CONTAINER_APP_PORT,
        app_path=settings.app_metrics_path,
        exporter=CONTAINER_EXPORTER,
        itself=f"{LOOPBACK}:{CONTAINER_PROMETHEUS_PORT}",
        rules=rules,
    )


def render(settings: Settings, scrape: Scrape, template: Path = TEMPLATE) -> str:
    variables = scrape.variables(settings)
    text = template.read_text()
    unknown = sorted(set(VARIABLE.findall(text)) - variables.keys())
    if unknown:
        raise ConfigError(f"{template.name} uses {', '.join(unknown)}, which nothing defines")
    lines = []
    for line in VARIABLE.sub(lambda m: variables[m.group(1)], text).splitlines(keepends=True):
        found = CONDITIONAL_LINE.match(line)
        if found is None:
            lines.append(line)
        elif found.group(2) not in ("static", "dns"):
            raise ConfigError(f"{template.name}: unknown condition #[{found.group(2)}] (known: static, dns)")
        elif found.group(2) == scrape.where:
            lines.append(found.group(1) + line[found.end() :])
    return "".join(lines)


def check_config(promtool: str, config: Path) -> None:
    """`promtool check config`: the config and every rule file it names; refused in one line."""
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    if checked.returncode != 0:
        said = (checked.stderr + checked.stdout).strip().splitlines() or [f"exit {checked.returncode}"]
        failed = [line.strip() for line in said if "FAILED" in line or "error" in line.lower()]
        reason = failed[0] if failed else said[-1]
        raise StackError(f"promtool check config rejected {config}: {reason}")


def url(settings: Settings) -> str:
    return f"http://{LOOPBACK}:{settings.prometheus_port}"


def announce(where: str) -> str:
    """The line `make up` prints for MONITORING=1."""
    return f"Prometheus (MONITORING=1): {where}  — /targets, /alerts (deploy/prometheus/rules.yml), /graph"
