"""docker-compose.yml and the Dockerfiles against the knob registry — no engine needed.

Compose repeats every knob's default in `${NAME:-default}`; these tests keep those copies equal to
service/settings.py and the Dockerfiles' ARG defaults, and pin the container rules the issue sets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.stackctl.config import KNOBS, NGINX_TEMPLATE
from deploy.stackctl.docker import COMPOSE_FILE, default_build_arg
from service.settings import Settings

INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
WITH_DEFAULT = re.compile(r"^([A-Z][A-Z0-9_]*):-(.*)$")
BUILD_INPUTS = {
    "PYTHON_IMAGE",
    "NGINX_IMAGE",
    "PROMETHEUS_IMAGE",
    "NGINX_EXPORTER_IMAGE",
    "REDIS_IMAGE",
    "OFFLINE",
}
# Knobs whose empty default means "the stack's own": compose names that one instead.
STACK_OWNED = {"REDIS_URL": "redis://redis:6379/0"}
RAW = COMPOSE_FILE.read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(RAW)
CODE = "\n".join(line for line in RAW.splitlines() if not line.lstrip().startswith("#"))


def interpolations() -> list[tuple[str, str]]:
    found = []
    for expression in INTERPOLATION.findall(CODE):
        match = WITH_DEFAULT.match(expression)
        assert match, (
            f"${{{expression}}}: every variable needs a `:-default` (compose must work without .env)"
        )
        found.append((match.group(1), match.group(2)))
    return found


def test_every_interpolated_name_is_a_knob_or_a_build_input() -> None:
    names = {name for name, _ in interpolations()}
    assert names, "no ${NAME:-default} found"
    unknown = names - KNOBS.keys() - BUILD_INPUTS
    assert not unknown, f"not in service/settings.py: {sorted(unknown)}"


@pytest.mark.parametrize(("name", "default"), sorted(set(interpolations())))
def test_compose_default_equals_the_registry_default(name: str, default: str) -> None:
    if name in BUILD_INPUTS:
        expected = "0" if name == "OFFLINE" else default_build_arg(name)
    elif name in STACK_OWNED:
        assert Settings.model_fields[KNOBS[name]].default == ""
        expected = STACK_OWNED[name]
    else:
        expected = str(Settings.model_fields[KNOBS[name]].default)
    assert default == expected, f"docker-compose.yml has ${{{name}:-{default}}}, the registry says {expected}"


def environment(service: str) -> dict[str, str]:
    return {key: str(value) for key, value in COMPOSE["services"][service]["environment"].items()}


def test_nginx_gets_every_variable_its_template_uses() -> None:
    used = set(re.findall(r"\$\{(NGINX_[A-Z0-9_]+)\}", NGINX_TEMPLATE.read_text()))
    missing = used - environment("nginx").keys()
    assert not missing, f"the nginx entrypoint would refuse to render: {sorted(missing)} not passed"


def test_app_sees_every_app_rooms_gunicorn_and_uvicorn_knob() -> None:
    wanted = {
        name
        for name in KNOBS
        if name.startswith(("APP_", "ROOMS_", "GUNICORN_", "UVICORN_"))
        or name in ("WEB_CONCURRENCY", "REDIS_URL", "REDIS_TIMEOUT")
    }
    # Planning figures are read only by `make check` on the host; the app's source and requirements go into
    # the image when it is built.
    wanted -= {"APP_EXPECTED_BLOCKING", "APP_EXPECTED_WEBSOCKETS", "APP_SRC", "APP_REQUIREMENTS"}
    missing = wanted - environment("app").keys()
    assert not missing, f"knobs the app container never receives: {sorted(missing)}"


def test_app_binds_inside_the_network_and_trusts_only_it() -> None:
    app = environment("app")
    assert app["GUNICORN_BIND"] == "0.0.0.0:8000"
    # The same variable sets the network's subnet and the only peers whose X-Forwarded-For is believed.
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert re.fullmatch(r"\$\{COMPOSE_SUBNET:-[0-9./]+\}", subnet)
    assert app["GUNICORN_FORWARDED_ALLOW_IPS"] == subnet


def test_only_nginx_and_the_locust_and_prometheus_uis_publish_ports_on_loopback_by_default() -> None:
    services = COMPOSE["services"]
    assert "ports" not in services["app"] and "ports" not in services["redis"]
    assert services["nginx"]["ports"] == ["${COMPOSE_PUBLISH_ADDRESS:-127.0.0.1}:${HTTP_PORT:-8080}:8080"]
    assert services["locust-master"]["ports"] == ["127.0.0.1:${LOCUST_WEB_PORT:-8089}:8089"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]
    published = {name for name, service in services.items() if "ports" in service}
    assert published == {"nginx", "locust-master", "prometheus"}


@pytest.mark.parametrize("service", ["app", "redis", "nginx", "locust-master", "locust-worker", "prometheus"])
def test_every_service_is_hardened_and_has_a_healthcheck(service: str) -> None:
    spec = COMPOSE["services"][service]
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert spec["restart"] == "unless-stopped"
    assert spec["healthcheck"]["test"][0] == "CMD"
    assert any(mount.startswith("/tmp:") for mount in spec["tmpfs"])
    assert spec["stop_grace_period"] == "${COMPOSE_STOP_GRACE_PERIOD:-30}s"


def test_locust_services_are_behind_the_loadtest_profile_and_nginx_waits_for_a_healthy_app() -> None:
    services = COMPOSE["services"]
    assert services["locust-master"]["profiles"] == ["loadtest"]
    assert services["locust-worker"]["profiles"] == ["loadtest"]
    assert "profiles" not in services["app"] and "profiles" not in services["nginx"]
    assert services["nginx"]["depends_on"] == {"app": {"condition": "service_healthy"}}


def test_the_monitoring_services_are_behind_their_profile_and_hardened() -> None:
    services = COMPOSE["services"]
    for name in ("prometheus", "nginx-exporter"):
        spec = services[name]
        assert spec["profiles"] == ["monitoring"]
        assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in spec["security_opt"]
    # Its samples on a tmpfs over the image's /prometheus: `make down` leaves no volume behind.
    assert any(mount.startswith("/prometheus:") for mount in services["prometheus"]["tmpfs"])
    # The official exporter image has no shell to probe with: Prometheus's TargetDown watches it.
    assert "healthcheck" not in services["nginx-exporter"]
    assert services["nginx-exporter"]["depends_on"] == {"nginx": {"condition": "service_healthy"}}


def test_stop_grace_outlasts_gunicorns_graceful_timeout_by_default() -> None:
    defaults = Settings()
    assert defaults.compose_stop_grace_period > defaults.gunicorn_graceful_timeout


@pytest.mark.parametrize("dockerfile", sorted((Path(COMPOSE_FILE).parent / "deploy").glob("Dockerfile.*")))
def test_dockerfiles_build_with_the_classic_builder_and_run_as_non_root(dockerfile: Path) -> None:
    text = "\n".join(line for line in dockerfile.read_text().splitlines() if not line.startswith("#"))
    assert "--mount" not in text and "<<" not in text, "BuildKit-only syntax"
    assert not dockerfile.read_text().startswith("# syntax="), "a BuildKit frontend directive"
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and not users[-1].startswith(("0", "root")), f"{dockerfile.name} runs as {users}"
    assert "HEALTHCHECK" in text
    for name in ("PYTHON_IMAGE", "NGINX_IMAGE", "PROMETHEUS_IMAGE", "NGINX_EXPORTER_IMAGE", "REDIS_IMAGE"):
        for default in re.findall(rf"^ARG {name}=(\S+)$", text, re.MULTILINE):
            assert default == default_build_arg(name), f"{dockerfile.name}: {name} default differs"
