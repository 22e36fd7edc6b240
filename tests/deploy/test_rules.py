"""The ordering rules of deploy/stackctl/rules.py, called directly: each broken rule names both knobs."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.stackctl import facts, rules, runtimes
from deploy.stackctl.config import PROFILES_DIR, effective
from service.settings import load_settings, usable_cpus

HOST = facts.HostFacts(
    facts.Fact("net.core.somaxconn (this host)", 4096),
    facts.Fact("ulimit -n (this host)", 20000),
    usable_cpus(),
)
PROFILES = sorted(path.stem for path in PROFILES_DIR.glob("*.env"))

BROKEN: list[tuple[rules.Rule, dict[str, Any], tuple[str, str], tuple[str, str]]] = [
    (
        rules.keepalive_order,
        {"nginx_upstream_keepalive_timeout": 20, "gunicorn_keepalive": 20},
        ("NGINX_UPSTREAM_KEEPALIVE_TIMEOUT", "GUNICORN_KEEPALIVE"),
        ("=20", "=20"),
    ),
    (
        rules.websocket_ping_order,
        {"uvicorn_ws_ping_interval": 50, "uvicorn_ws_ping_timeout": 30, "nginx_ws_read_timeout": 60},
        ("UVICORN_WS_PING_INTERVAL=50 + UVICORN_WS_PING_TIMEOUT=30", "NGINX_WS_READ_TIMEOUT"),
        ("= 80", "=60"),
    ),
    (
        rules.request_timeout_order,
        {"app_request_timeout": 40, "nginx_proxy_read_timeout": 30},
        ("APP_REQUEST_TIMEOUT", "NGINX_PROXY_READ_TIMEOUT"),
        ("=40", "=30"),
    ),
    (
        rules.request_timeout_order,
        {"nginx_proxy_read_timeout": 90, "locust_client_timeout": 60},
        ("NGINX_PROXY_READ_TIMEOUT", "LOCUST_CLIENT_TIMEOUT"),
        ("=90", "=60"),
    ),
    (
        rules.graceful_shutdown_order,
        {"uvicorn_timeout_graceful_shutdown": 26, "gunicorn_graceful_timeout": 25},
        ("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "GUNICORN_GRACEFUL_TIMEOUT"),
        ("=26", "=25"),
    ),
    (
        rules.graceful_shutdown_order,
        {"gunicorn_graceful_timeout": 25, "compose_stop_grace_period": 10},
        ("GUNICORN_GRACEFUL_TIMEOUT", "COMPOSE_STOP_GRACE_PERIOD"),
        ("=25", "=10"),
    ),
    (
        rules.backplane_drain,
        {"rooms_read_block": 10, "redis_timeout": 10},
        ("ROOMS_READ_BLOCK=10 + REDIS_TIMEOUT=10", "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"),
        ("= 20", "=20"),
    ),
    (
        rules.blocking_vs_heartbeat,
        {"app_expected_blocking": 45, "gunicorn_timeout": 30},
        ("APP_EXPECTED_BLOCKING", "GUNICORN_TIMEOUT"),
        ("=45", "=30"),
    ),
    (
        rules.startup_vs_heartbeat,
        {"app_startup_timeout": 30, "gunicorn_timeout": 30},
        ("APP_STARTUP_TIMEOUT", "GUNICORN_TIMEOUT"),
        ("=30", "=30"),
    ),
    (
        rules.connection_capacity,
        {"gunicorn_backlog": 8192},
        ("GUNICORN_BACKLOG", "net.core.somaxconn"),
        ("=8192", "=4096"),
    ),
    (
        rules.connection_capacity,
        {"uvicorn_limit_concurrency": 3000, "web_concurrency": 2, "nginx_worker_processes": "2"},
        ("UVICORN_LIMIT_CONCURRENCY=3000", "NGINX_WORKER_CONNECTIONS"),
        ("= 6000", "=4096"),
    ),
    (
        rules.connection_capacity,
        {"nginx_worker_connections": 12000},
        ("NGINX_WORKER_CONNECTIONS", "NGINX_WORKER_RLIMIT_NOFILE"),
        ("=12000", "=10000"),
    ),
    (
        rules.connection_capacity,
        {"nginx_worker_rlimit_nofile": 50000},
        ("NGINX_WORKER_RLIMIT_NOFILE", "ulimit -n"),
        ("=50000", "=20000"),
    ),
    (
        rules.concurrency_headroom,
        {"uvicorn_limit_concurrency": 100, "nginx_upstream_keepalive": 32, "nginx_worker_processes": "2"},
        ("NGINX_UPSTREAM_KEEPALIVE=32", "UVICORN_LIMIT_CONCURRENCY"),
        ("= 164", "=100"),
    ),
]


def test_the_defaults_obey_every_rule() -> None:
    findings = rules.evaluate(load_settings(), HOST)
    assert rules.problems(findings) == []
    assert {f.rule.split(" (")[0] for f in findings} == {f"rule {n}" for n in range(1, 8)}


@pytest.mark.parametrize(("rule", "overrides", "names", "values"), BROKEN)
def test_a_broken_rule_is_an_error_naming_both_knobs_and_values(
    rule: rules.Rule, overrides: dict[str, Any], names: tuple[str, str], values: tuple[str, str]
) -> None:
    assert rules.errors(rule(load_settings(), HOST)) == [], "the defaults must pass this rule"
    broken = rules.errors(rule(load_settings(**overrides), HOST))
    assert len(broken) == 1
    message = str(broken[0])
    for name in names:
        assert name in message
    left, right = message.split(" must be ")
    assert names[0] in left and values[0] in left
    assert names[1] in right and values[1] in right
    assert "Fix:" in message and broken[0].fix and broken[0].why


def test_rule_2_names_every_websocket_path_it_holds_for() -> None:
    [held] = rules.websocket_ping_order(load_settings(nginx_websocket_paths="/ws/ /chat/socket"), HOST)
    assert held.severity == "ok"
    said = "< NGINX_WS_READ_TIMEOUT=75 on every path of NGINX_WEBSOCKET_PATHS=/ws/ /chat/socket"
    assert held.claim.endswith(said)
    assert held.values["NGINX_WEBSOCKET_PATHS"] == "/ws/ /chat/socket"
    [broken] = rules.websocket_ping_order(
        load_settings(nginx_websocket_paths="/chat/", nginx_ws_read_timeout=40), HOST
    )
    assert broken.severity == "error" and "NGINX_WEBSOCKET_PATHS=/chat/" in broken.claim
    [none] = rules.websocket_ping_order(load_settings(nginx_websocket_paths=""), HOST)
    assert none.claim.endswith("(NGINX_WEBSOCKET_PATHS is empty)")


def test_every_rule_has_a_breaking_case() -> None:
    assert {case[0] for case in BROKEN} == set(rules.RULES)


def test_docker_limits_come_from_the_compose_knobs() -> None:
    settings = load_settings(compose_somaxconn=128, compose_nofile=4096)
    host = facts.HostFacts.docker(settings)
    claims = [f.claim for f in rules.errors(rules.connection_capacity(settings, host))]
    assert claims == [
        "GUNICORN_BACKLOG=2048 must be <= COMPOSE_SOMAXCONN=128",
        "NGINX_WORKER_RLIMIT_NOFILE=10000 must be <= COMPOSE_NOFILE=4096",
    ]


def test_local_limits_are_read_from_this_host() -> None:
    import resource

    host = facts.HostFacts.local()
    assert host.open_files.value == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert host.somaxconn.value == int(facts.SOMAXCONN_FILE.read_text())


def test_boundaries_are_strict_where_the_rule_says_below() -> None:
    at_limit = load_settings(gunicorn_backlog=4096, nginx_worker_connections=10000)
    assert rules.errors(rules.connection_capacity(at_limit, HOST)) == []
    equal = load_settings(app_request_timeout=30, nginx_proxy_read_timeout=30)
    assert len(rules.errors(rules.request_timeout_order(equal, HOST))) == 1


def test_unlimited_concurrency_skips_the_sizing_but_warns() -> None:
    settings = load_settings(uvicorn_limit_concurrency=0)
    assert rules.errors(rules.evaluate(settings, HOST)) == []
    warnings = [f for f in rules.evaluate(settings, HOST) if f.severity == "warning"]
    assert [f.rule for f in warnings] == ["unbounded concurrency"]


def test_uvicorn_knobs_without_our_worker_class_warn() -> None:
    foreign = load_settings(gunicorn_worker_class="asgi", uvicorn_ws_ping_interval=5)
    warnings = [f for f in rules.settings_without_effect(foreign, HOST) if f.rule == "no effect"]
    assert len(warnings) == 1
    assert (
        "UVICORN_WS_PING_INTERVAL" in warnings[0].claim and "GUNICORN_WORKER_CLASS=asgi" in warnings[0].claim
    )
    ours = load_settings(uvicorn_ws_ping_interval=5)
    assert rules.settings_without_effect(ours, HOST) == []
    unset = load_settings(gunicorn_worker_class="asgi")
    assert rules.settings_without_effect(unset, HOST) == []


@pytest.mark.parametrize(
    ("jitter", "warned"), [(0, True), (999, True), (1000, False), (5000, False), (5001, True)]
)
def test_jitter_outside_10_to_50_percent_warns(jitter: int, warned: bool) -> None:
    settings = load_settings(gunicorn_max_requests=10000, gunicorn_max_requests_jitter=jitter)
    found = [f for f in rules.settings_without_effect(settings, HOST) if f.rule == "recycling jitter"]
    assert bool(found) == warned
    if warned:
        assert "GUNICORN_MAX_REQUESTS_JITTER" in found[0].claim and "GUNICORN_MAX_REQUESTS=" in found[0].claim


def test_warnings_do_not_make_a_config_unsafe() -> None:
    settings = load_settings(gunicorn_max_requests_jitter=0)
    assert rules.problems(rules.evaluate(settings, HOST)) and not rules.errors(rules.evaluate(settings, HOST))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_obeys_every_rule_on_this_host(profile: str) -> None:
    config = effective(environ={"PROFILE": profile}, env_file=None)
    for name, runtime in runtimes.RUNTIMES.items():
        host = runtime.host_facts(config.settings)
        assert rules.errors(rules.evaluate(config.settings, host)) == [], (profile, name)


def test_the_four_profiles_exist() -> None:
    assert {"default", "io-heavy", "websocket-heavy", "cpu-bound"} <= set(PROFILES)


@pytest.mark.parametrize(("value", "allowed"), [("1", True), ("yes", True), ("", False), ("0", False)])
def test_the_override_is_explicit(value: str, allowed: bool) -> None:
    assert rules.unsafe_config_allowed({"ALLOW_UNSAFE_CONFIG": value}) is allowed


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"nginx_upstream_keepalive_timeout": 25}, "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT=25"),
        ({"uvicorn_ws_close_spread": 30}, "UVICORN_WS_CLOSE_SPREAD=30"),
    ],
)
def test_a_drain_longer_than_the_grace_is_a_warning_naming_both_knobs(
    overrides: dict[str, Any], names: str
) -> None:
    assert rules.drain_fits_the_grace(load_settings(), HOST) == []
    [warning] = rules.drain_fits_the_grace(load_settings(**overrides), HOST)
    assert (warning.severity, warning.rule_id) == ("warning", 4)
    assert names in warning.claim and "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=20" in warning.claim


# Every swarm finding at once: an old engine on three nodes, no registry, TLS with Locust services.
SWARM_HOST = facts.HostFacts.on_swarm(load_settings(), facts.SwarmFacts("1.39", 3))
NO_ENGINE = facts.HostFacts.on_swarm(load_settings(), facts.SwarmFacts(None, None))
SWARM_TRIPS = {
    "nginx_tls": 1,
    "swarm_locust_workers": 2,
    "compose_publish_address": "127.0.0.1",
    "swarm_stop_delay": 60,
    "swarm_app_replicas": 3,
    "gunicorn_max_requests_jitter": 0,
    "uvicorn_limit_concurrency": 0,
}


@pytest.mark.parametrize("host", [HOST, SWARM_HOST, NO_ENGINE], ids=["local", "swarm", "no engine"])
@pytest.mark.parametrize("overrides", [case[1] for case in BROKEN] + [SWARM_TRIPS])
def test_advice_only_warns(host: facts.HostFacts, overrides: dict[str, Any]) -> None:
    settings = load_settings(**overrides)
    for check in rules.ADVICE:
        assert {f.severity for f in check(settings, host)} <= {"warning"}, check.__name__


def test_a_swarm_of_several_nodes_without_a_registry_is_an_error() -> None:
    cluster = facts.HostFacts.on_swarm(load_settings(), facts.SwarmFacts("1.41", 3))
    assert [f.rule for f in rules.errors(rules.evaluate(load_settings(), cluster))] == ["swarm images"]
    late = rules.errors(rules.graceful_shutdown_order(load_settings(**SWARM_TRIPS), SWARM_HOST))
    assert [f.rule for f in late] == ["rule 4 (graceful shutdown, swarm)"]


def test_a_unix_bind_says_which_host_port_knobs_do_not_apply_locally() -> None:
    bind = "unix:/run/blueprint/app.sock"
    settings = load_settings(gunicorn_bind=bind, nginx_upstream="127.0.0.1:9000")
    found = {f.rule: f for f in rules.unix_socket_findings(settings, HOST)}
    assert set(found) == {"no effect", "client address"}
    assert all(f.severity == "warning" for f in found.values())
    assert found["no effect"].claim == f"NGINX_UPSTREAM=127.0.0.1:9000 set while GUNICORN_BIND={bind}"
    assert "host:port upstream does not apply" in found["no effect"].why
    assert (
        found["client address"].claim == f"GUNICORN_FORWARDED_ALLOW_IPS=127.0.0.1 with GUNICORN_BIND={bind}"
    )
    assert "GUNICORN_FORWARDED_ALLOW_IPS='*'" in found["client address"].fix
    trusted = load_settings(gunicorn_bind=bind, gunicorn_forwarded_allow_ips="*")
    assert rules.unix_socket_findings(trusted, HOST) == []
    assert rules.unix_socket_findings(load_settings(), HOST) == [], "a TCP bind has nothing to say"


def test_a_unix_bind_is_refused_on_swarm_and_left_to_the_overlay_in_docker() -> None:
    settings = load_settings(gunicorn_bind="unix:/run/blueprint/app.sock")
    swarm = facts.HostFacts(HOST.somaxconn, HOST.open_files, HOST.cpus, facts.SwarmFacts("1.45", 1), True)
    (refusal,) = rules.unix_socket_on_swarm(settings, swarm)
    assert refusal.severity == "error" and "no other node" in refusal.why
    assert refusal in rules.errors(rules.evaluate(settings, swarm))
    docker = facts.HostFacts.docker(settings)
    assert docker.compose and rules.unix_socket_findings(settings, docker) == []
    assert rules.unix_socket_on_swarm(settings, docker) == []


def test_a_redis_timeout_past_the_request_deadline_is_advice_naming_both_knobs() -> None:
    assert rules.backplane_before_the_deadline(load_settings(), HOST) == []
    (finding,) = rules.backplane_before_the_deadline(
        load_settings(redis_timeout=3, app_request_timeout=2), HOST
    )
    assert finding.severity == "warning" and finding.rule == "rule 3 (request timeouts, backplane)"
    assert "REDIS_TIMEOUT=3 must be < APP_REQUEST_TIMEOUT=2" in str(finding)
