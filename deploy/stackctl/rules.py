"""The ordering rules between the layers (../shared/notes/failure-modes.md), as pure functions.

Each check takes the settings and the facts of the host that will run them (deploy/stackctl/facts.py
gathers those) and returns its findings: an `error` breaks a rule or misses a requirement (`make check`
fails, `make up` refuses), a `warning` is a setting that does nothing or is unwise, `ok` a rule that holds.
Every finding names both variables, both values, the rule and the fix. The checks are listed by what they
can find: RULES and REQUIREMENTS errors, ADVICE warnings only.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from deploy.stackctl.facts import SWARM_SYSCTLS_API, SWARM_ULIMITS_API, Fact, HostFacts, api_at_least
from service.settings import DEMO_APP, OUR_WORKER_CLASS, Settings, env_name, unix_socket_path

# The ordering rules of failure-modes.md by number; a finding's `rule` is "rule N (title)".
RULE_TITLES: dict[int, str] = {
    1: "upstream keep-alive",
    2: "WebSocket pings",
    3: "request timeouts",
    4: "graceful shutdown",
    5: "blocked event loop",
    6: "listen backlog",
    7: "concurrency headroom",
}


def rule_name(rule_id: int, aspect: str | None = None) -> str:
    return f"rule {rule_id} ({aspect or RULE_TITLES[rule_id]})"


Severity = Literal["ok", "error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One verdict: `rule_id` is the ordering rule's number (None for requirements and advice), `values`
    every knob or host fact it compared (name -> value as shown)."""

    rule: str
    severity: Severity
    claim: str
    why: str
    fix: str
    rule_id: int | None = None
    values: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.rule}: {self.claim} — {self.why}. Fix: {self.fix}."


def shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def labelled(name: str, value: float) -> str:
    """NAME=value, or for a sum of knobs that already shows its parts: A=1 + B=2 = 3."""
    return f"{name} = {shown(value)}" if "=" in name else f"{name}={shown(value)}"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its label, its value, and the knobs or facts it is made of."""

    label: str
    value: float
    parts: Mapping[str, str]


def knob(settings: Settings, field_name: str) -> Side:
    name, value = env_name(field_name), getattr(settings, field_name)
    return Side(name, value, {name: shown(value)})


def fact(host_fact: Fact) -> Side:
    return Side(host_fact.name, host_fact.value, {host_fact.name: shown(host_fact.value)})


def combined(label: str, value: float, *parts: Side) -> Side:
    return Side(label, value, {name: v for part in parts for name, v in part.parts.items()})


def below(
    rule: tuple[int, str | None],
    low: Side,
    high: Side,
    why: str,
    fix: str,
    or_equal: bool = False,
) -> list[Finding]:
    rule_id, aspect = rule
    holds = low.value <= high.value if or_equal else low.value < high.value
    relation = "<=" if or_equal else "<"
    must = "" if holds else "must be "
    claim = f"{labelled(low.label, low.value)} {must}{relation} {labelled(high.label, high.value)}"
    severity: Severity = "ok" if holds else "error"
    values = {**low.parts, **high.parts}
    return [Finding(rule_name(rule_id, aspect), severity, claim, why, fix, rule_id, values)]


def nginx_workers(settings: Settings, host: HostFacts) -> int:
    value = settings.nginx_worker_processes
    return host.cpus if value == "auto" else int(value)


def keepalive_order(settings: Settings, host: HostFacts) -> list[Finding]:
    return below(
        (1, None),
        knob(settings, "nginx_upstream_keepalive_timeout"),
        knob(settings, "gunicorn_keepalive"),
        "otherwise nginx reuses a pooled connection the app is closing: sporadic 502, mostly on POST, "
        "which nginx does not retry",
        "lower NGINX_UPSTREAM_KEEPALIVE_TIMEOUT or raise GUNICORN_KEEPALIVE above it",
    )


def websocket_ping_order(settings: Settings, host: HostFacts) -> list[Finding]:
    """NGINX_WS_READ_TIMEOUT is that of every location of NGINX_WEBSOCKET_PATHS: the claim names them."""
    silence = settings.uvicorn_ws_ping_interval + settings.uvicorn_ws_ping_timeout
    paths = settings.nginx_websocket_paths
    where = f"on every path of NGINX_WEBSOCKET_PATHS={paths}" if paths else "(NGINX_WEBSOCKET_PATHS is empty)"
    findings = below(
        (2, None),
        combined(
            f"UVICORN_WS_PING_INTERVAL={shown(settings.uvicorn_ws_ping_interval)} + "
            f"UVICORN_WS_PING_TIMEOUT={shown(settings.uvicorn_ws_ping_timeout)}",
            silence,
            knob(settings, "uvicorn_ws_ping_interval"),
            knob(settings, "uvicorn_ws_ping_timeout"),
        ),
        knob(settings, "nginx_ws_read_timeout"),
        "nginx closes a WebSocket tunnel on one of NGINX_WEBSOCKET_PATHS that stays silent for "
        "NGINX_WS_READ_TIMEOUT; the client sees 1006",
        "lower UVICORN_WS_PING_INTERVAL/UVICORN_WS_PING_TIMEOUT or raise NGINX_WS_READ_TIMEOUT above "
        f"{shown(silence)}",
    )
    values = {"NGINX_WEBSOCKET_PATHS": paths}
    return [replace(f, claim=f"{f.claim} {where}", values={**f.values, **values}) for f in findings]


def request_timeout_order(settings: Settings, host: HostFacts) -> list[Finding]:
    return below(
        (3, None),
        knob(settings, "app_request_timeout"),
        knob(settings, "nginx_proxy_read_timeout"),
        "the app must give up first so the client gets the app's JSON 504, not nginx's 504",
        "lower APP_REQUEST_TIMEOUT or raise NGINX_PROXY_READ_TIMEOUT above it",
    ) + below(
        (3, None),
        knob(settings, "nginx_proxy_read_timeout"),
        knob(settings, "locust_client_timeout"),
        "a client that gives up before nginx never sees the server's answer (nginx logs 499)",
        "raise LOCUST_CLIENT_TIMEOUT or lower NGINX_PROXY_READ_TIMEOUT below it",
    )


def graceful_shutdown_order(settings: Settings, host: HostFacts) -> list[Finding]:
    """On swarm the app's TERM comes SWARM_STOP_DELAY late, so its grace must cover that delay too."""
    findings = below(
        (4, None),
        knob(settings, "uvicorn_timeout_graceful_shutdown"),
        knob(settings, "gunicorn_graceful_timeout"),
        "gunicorn SIGKILLs workers still draining after GUNICORN_GRACEFUL_TIMEOUT: their in-flight requests "
        "die with 502 instead of uvicorn closing them in order",
        "lower UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN or raise GUNICORN_GRACEFUL_TIMEOUT above it",
    ) + below(
        (4, None),
        knob(settings, "gunicorn_graceful_timeout"),
        knob(settings, "compose_stop_grace_period"),
        "docker SIGKILLs the app container before gunicorn's graceful stop ends: exit 137, work lost",
        "lower GUNICORN_GRACEFUL_TIMEOUT or raise COMPOSE_STOP_GRACE_PERIOD above it",
    )
    if host.swarm is not None:
        findings += swarm_stop_order(settings)
    return findings


def swarm_stop_order(settings: Settings) -> list[Finding]:
    stop = settings.gunicorn_graceful_timeout + settings.swarm_stop_delay
    return below(
        (4, "graceful shutdown, swarm"),
        combined(
            f"GUNICORN_GRACEFUL_TIMEOUT={settings.gunicorn_graceful_timeout} + "
            f"SWARM_STOP_DELAY={settings.swarm_stop_delay}",
            stop,
            knob(settings, "gunicorn_graceful_timeout"),
            knob(settings, "swarm_stop_delay"),
        ),
        knob(settings, "compose_stop_grace_period"),
        "an app task gets gunicorn's TERM only SWARM_STOP_DELAY after swarm's; swarm SIGKILLs it "
        "COMPOSE_STOP_GRACE_PERIOD after its own TERM: exit 137, in-flight work lost",
        f"raise COMPOSE_STOP_GRACE_PERIOD above {stop} or lower SWARM_STOP_DELAY / GUNICORN_GRACEFUL_TIMEOUT",
    )


def uses_backplane(settings: Settings) -> bool:
    """The demo's rooms use Redis; another APP_MODULE only when it names one (REDIS_URL)."""
    return bool(settings.redis_url) or settings.app_module == DEMO_APP


def backplane_drain(settings: Settings, host: HostFacts) -> list[Finding]:
    """The rooms' Redis (service/rooms/): a draining worker's waits on Redis must end before its graceful
    shutdown does."""
    if not uses_backplane(settings):
        return []
    read = settings.rooms_read_block + settings.redis_timeout
    return below(
        (4, "graceful shutdown, rooms"),
        combined(
            f"ROOMS_READ_BLOCK={shown(settings.rooms_read_block)} + "
            f"REDIS_TIMEOUT={shown(settings.redis_timeout)}",
            read,
            knob(settings, "rooms_read_block"),
            knob(settings, "redis_timeout"),
        ),
        knob(settings, "uvicorn_timeout_graceful_shutdown"),
        "a draining worker's members wait on Redis up to REDIS_TIMEOUT (a publish, a join's history) and "
        "its reader up to ROOMS_READ_BLOCK + REDIS_TIMEOUT for its last XREAD; cut short by "
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN, a publish is cancelled mid-command and its member cannot "
        "know whether it was sent",
        "lower ROOMS_READ_BLOCK / REDIS_TIMEOUT or raise UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN above "
        f"{shown(read)}",
    )


def backplane_before_the_deadline(settings: Settings, host: HostFacts) -> list[Finding]:
    """Advice on rule 3: a publish to a stalled Redis should get the app's 503, not the platform's 504."""
    if not uses_backplane(settings):
        return []
    found = below(
        (3, "request timeouts, backplane"),
        knob(settings, "redis_timeout"),
        knob(settings, "app_request_timeout"),
        "a publish waits for Redis at most REDIS_TIMEOUT, then answers a JSON 503 backplane_unavailable "
        "that says to retry; past APP_REQUEST_TIMEOUT the platform's 504 request_timeout comes first",
        "lower REDIS_TIMEOUT or raise APP_REQUEST_TIMEOUT above it",
    )
    return [replace(f, severity="warning") for f in found if f.severity == "error"]


def drain_fits_the_grace(settings: Settings, host: HostFacts) -> list[Finding]:
    """Advice on rule 4: an exiting worker waits for nginx to drop its idle pooled connections and spreads
    its WebSocket closes; both must end before UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN cuts the drain short."""
    grace = knob(settings, "uvicorn_timeout_graceful_shutdown")
    found = below(
        (4, "drain"),
        knob(settings, "nginx_upstream_keepalive_timeout"),
        grace,
        "an exiting worker leaves idle pooled connections for nginx to close after its keep-alive timeout; "
        "cut short, it closes them itself and races a POST nginx is sending (502)",
        "lower NGINX_UPSTREAM_KEEPALIVE_TIMEOUT or raise UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN above it",
    ) + below(
        (4, "drain"),
        knob(settings, "uvicorn_ws_close_spread"),
        grace,
        "WebSockets not closed when the grace ends are all closed at once: their clients reconnect together",
        "lower UVICORN_WS_CLOSE_SPREAD or raise UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN above it",
    )
    return [replace(f, severity="warning") for f in found if f.severity == "error"]


def blocking_vs_heartbeat(settings: Settings, host: HostFacts) -> list[Finding]:
    return below(
        (5, None),
        knob(settings, "app_expected_blocking"),
        knob(settings, "gunicorn_timeout"),
        "a loop blocked longer than GUNICORN_TIMEOUT misses its heartbeat: gunicorn kills the worker and "
        "every request on it gets 502",
        "move blocking code off the loop (a `def` route or anyio.to_thread), or raise GUNICORN_TIMEOUT above "
        "APP_EXPECTED_BLOCKING",
    )


def startup_vs_heartbeat(settings: Settings, host: HostFacts) -> list[Finding]:
    return below(
        (5, "app startup"),
        knob(settings, "app_startup_timeout"),
        knob(settings, "gunicorn_timeout"),
        "gunicorn's heartbeat does not tick during the app's lifespan startup: a startup longer than "
        "GUNICORN_TIMEOUT is killed and restarted by gunicorn, over and over, instead of stopping it",
        "lower APP_STARTUP_TIMEOUT or raise GUNICORN_TIMEOUT above it",
    )


def connection_capacity(settings: Settings, host: HostFacts) -> list[Finding]:
    findings = below(
        (6, None),
        knob(settings, "gunicorn_backlog"),
        fact(host.somaxconn),
        "the kernel silently caps the listen queue at somaxconn, so bursts are reset earlier than configured",
        f"lower GUNICORN_BACKLOG to at most {host.somaxconn.value} or raise {host.somaxconn.name}",
        or_equal=True,
    )
    if settings.uvicorn_limit_concurrency:
        proxied = settings.uvicorn_limit_concurrency * settings.workers
        per_nginx_worker = math.ceil(proxied / nginx_workers(settings, host))
        findings += below(
            (6, "nginx connections"),
            combined(
                f"2 x UVICORN_LIMIT_CONCURRENCY={settings.uvicorn_limit_concurrency} x workers="
                f"{settings.workers} / nginx workers={nginx_workers(settings, host)}",
                2 * per_nginx_worker,
                knob(settings, "uvicorn_limit_concurrency"),
                knob(settings, "web_concurrency"),
                knob(settings, "nginx_worker_processes"),
            ),
            knob(settings, "nginx_worker_connections"),
            "each proxied request holds a client and an upstream connection; nginx refuses new ones past "
            "NGINX_WORKER_CONNECTIONS ('worker_connections are not enough')",
            f"raise NGINX_WORKER_CONNECTIONS to at least {2 * per_nginx_worker} or lower "
            "UVICORN_LIMIT_CONCURRENCY / WEB_CONCURRENCY",
            or_equal=True,
        )
    findings += below(
        (6, "open files"),
        knob(settings, "nginx_worker_connections"),
        knob(settings, "nginx_worker_rlimit_nofile"),
        "every connection is a file descriptor; nginx fails with 'Too many open files' before it reaches "
        "NGINX_WORKER_CONNECTIONS",
        "raise NGINX_WORKER_RLIMIT_NOFILE or lower NGINX_WORKER_CONNECTIONS",
        or_equal=True,
    )
    findings += below(
        (6, "open files"),
        knob(settings, "nginx_worker_rlimit_nofile"),
        fact(host.open_files),
        "nginx cannot raise its open-file limit past the limit it runs under",
        f"lower NGINX_WORKER_RLIMIT_NOFILE to at most {host.open_files.value} or raise "
        f"{host.open_files.name}",
        or_equal=True,
    )
    return findings


def concurrency_headroom(settings: Settings, host: HostFacts) -> list[Finding]:
    limit = settings.uvicorn_limit_concurrency
    if not limit:
        return []
    workers = nginx_workers(settings, host)
    pooled = settings.nginx_upstream_keepalive * workers
    reserved = pooled + settings.app_expected_websockets
    return below(
        (7, None),
        combined(
            f"NGINX_UPSTREAM_KEEPALIVE={settings.nginx_upstream_keepalive} x nginx workers={workers} + "
            f"APP_EXPECTED_WEBSOCKETS={settings.app_expected_websockets}",
            reserved,
            knob(settings, "nginx_upstream_keepalive"),
            knob(settings, "nginx_worker_processes"),
            knob(settings, "app_expected_websockets"),
        ),
        knob(settings, "uvicorn_limit_concurrency"),
        "uvicorn counts idle pooled keep-alive connections and WebSockets against its limit and answers an "
        "immediate 503 above it, even when no request is busy",
        f"raise UVICORN_LIMIT_CONCURRENCY above {reserved} or lower NGINX_UPSTREAM_KEEPALIVE / "
        "APP_EXPECTED_WEBSOCKETS",
    )


def is_our_worker_class(path: str) -> bool:
    if path == OUR_WORKER_CLASS:
        return True
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        return False
    try:
        candidate = getattr(importlib.import_module(module_name), class_name)
        ours = getattr(importlib.import_module("service.platform.worker"), "UvicornWorker")  # noqa: B009
    except (ImportError, AttributeError):
        return False
    return isinstance(candidate, type) and issubclass(candidate, ours)


def settings_without_effect(settings: Settings, host: HostFacts) -> list[Finding]:
    findings = []
    set_uvicorn = sorted(env_name(f) for f in settings.model_fields_set if f.startswith("uvicorn_"))
    if set_uvicorn and not is_our_worker_class(settings.gunicorn_worker_class):
        findings.append(
            Finding(
                "no effect",
                "warning",
                f"{', '.join(set_uvicorn)} set while GUNICORN_WORKER_CLASS={settings.gunicorn_worker_class}",
                f"only {OUR_WORKER_CLASS} passes UVICORN_* knobs to uvicorn; they do nothing here",
                f"unset them or use GUNICORN_WORKER_CLASS={OUR_WORKER_CLASS}",
                values={"GUNICORN_WORKER_CLASS": settings.gunicorn_worker_class}
                | {name: shown(getattr(settings, name.lower())) for name in set_uvicorn},
            )
        )
    maximum, jitter = settings.gunicorn_max_requests, settings.gunicorn_max_requests_jitter
    recycling = {"GUNICORN_MAX_REQUESTS": str(maximum), "GUNICORN_MAX_REQUESTS_JITTER": str(jitter)}
    if maximum and not 0.1 * maximum <= jitter <= 0.5 * maximum:
        findings.append(
            Finding(
                "recycling jitter",
                "warning",
                f"GUNICORN_MAX_REQUESTS_JITTER={jitter} is {100 * jitter / maximum:.0f} % of "
                f"GUNICORN_MAX_REQUESTS={maximum}",
                "outside 10-50 % workers recycle nearly together (too little) or unpredictably (too much)",
                f"set GUNICORN_MAX_REQUESTS_JITTER between {math.ceil(0.1 * maximum)} and {maximum // 2}",
                values=recycling,
            )
        )
    if not maximum and jitter:
        findings.append(
            Finding(
                "recycling jitter",
                "warning",
                f"GUNICORN_MAX_REQUESTS_JITTER={jitter} with GUNICORN_MAX_REQUESTS=0",
                "jitter only applies when workers are recycled",
                "set GUNICORN_MAX_REQUESTS_JITTER=0 or enable GUNICORN_MAX_REQUESTS",
                values=recycling,
            )
        )
    if not settings.uvicorn_limit_concurrency:
        findings.append(
            Finding(
                "unbounded concurrency",
                "warning",
                "UVICORN_LIMIT_CONCURRENCY=0 (unlimited) with "
                f"NGINX_WORKER_CONNECTIONS={settings.nginx_worker_connections}",
                "nginx worker connections cannot be sized against an unlimited app, and an overloaded worker "
                "queues instead of answering 503",
                "set UVICORN_LIMIT_CONCURRENCY",
                values={
                    "UVICORN_LIMIT_CONCURRENCY": "0",
                    "NGINX_WORKER_CONNECTIONS": shown(settings.nginx_worker_connections),
                },
            )
        )
    return findings


# --- swarm: what docker-compose.yml relies on that a swarm stack does not do, where stackctl cannot stand
# in. Each check finds nothing unless the host is a swarm (host.swarm set).


def swarm_images(settings: Settings, host: HostFacts) -> list[Finding]:
    swarm = host.swarm
    if swarm is None or not swarm.nodes or swarm.nodes <= 1 or settings.swarm_registry:
        return []
    return [
        Finding(
            "swarm images",
            "error",
            f"SWARM_REGISTRY is empty on a swarm of {swarm.nodes} nodes",
            "swarm ignores `build:`: images built here exist on this node only, and tasks placed on "
            "another node fail with `No such image`",
            "set SWARM_REGISTRY to a registry every node can pull from (docs/SWARM.md)",
            values={"SWARM_REGISTRY": "", "nodes": str(swarm.nodes)},
        )
    ]


def swarm_knobs_without_effect(settings: Settings, host: HostFacts) -> list[Finding]:
    set_swarm = sorted(env_name(f) for f in settings.model_fields_set if f.startswith("swarm_"))
    if host.swarm is not None or not set_swarm:
        return []
    return [
        Finding(
            "no effect",
            "warning",
            f"{', '.join(set_swarm)} set while the runtime is not swarm",
            "only RUNTIME=swarm deploys a stack; the other runtimes ignore the SWARM_* knobs",
            "unset them or use RUNTIME=swarm",
            values={name: str(getattr(settings, name.lower())) for name in set_swarm},
        )
    ]


def swarm_engine_unknown(settings: Settings, host: HostFacts) -> list[Finding]:
    if host.swarm is None or host.swarm.api_version is not None:
        return []
    return [
        Finding(
            "swarm engine",
            "warning",
            "no Docker engine answered: its support of sysctls and ulimits for services is unknown",
            "swarm applies COMPOSE_SOMAXCONN from engine API 1.40 and COMPOSE_NOFILE from 1.41 on; "
            "older engines ignore them and rule 6 does not hold as checked",
            "set DOCKER_HOST to the swarm manager and run `make check` again",
        )
    ]


def swarm_engine_too_old(settings: Settings, host: HostFacts) -> list[Finding]:
    if host.swarm is None:
        return []
    api = host.swarm.api_version
    ignored = [
        name
        for name, minimum in (
            ("sysctls (COMPOSE_SOMAXCONN)", SWARM_SYSCTLS_API),
            ("ulimits (COMPOSE_NOFILE)", SWARM_ULIMITS_API),
        )
        if not api_at_least(api, minimum)
    ]
    if not ignored:
        return []
    return [
        Finding(
            "swarm engine",
            "warning",
            f"engine API {api} ignores {' and '.join(ignored)} for swarm services",
            "tasks keep the engine's defaults, so the backlog and open-file limits of rule 6 are "
            "checked against those defaults, not against the compose knobs",
            f"upgrade the engine to API >= {SWARM_ULIMITS_API} (Docker 20.10)",
            values={"engine API": str(api)},
        )
    ]


def swarm_tls(settings: Settings, host: HostFacts) -> list[Finding]:
    if host.swarm is None or not settings.nginx_tls or settings.swarm_locust_workers <= 0:
        return []
    return [
        Finding(
            "swarm TLS",
            "warning",
            f"NGINX_TLS=1 with SWARM_LOCUST_WORKERS={settings.swarm_locust_workers}",
            "the Locust services load nginx's plain port, which with TLS only redirects to HTTPS "
            "(308), by a name the certificate does not carry",
            "run Locust from a host (`make loadtest`), or terminate TLS in front of nginx",
            values={"NGINX_TLS": "1", "SWARM_LOCUST_WORKERS": str(settings.swarm_locust_workers)},
        )
    ]


def swarm_publish(settings: Settings, host: HostFacts) -> list[Finding]:
    if host.swarm is None or settings.compose_publish_address == "0.0.0.0":
        return []
    return [
        Finding(
            "swarm publish",
            "warning",
            f"COMPOSE_PUBLISH_ADDRESS={settings.compose_publish_address} does not apply to swarm: "
            f"HTTP_PORT={settings.http_port} listens on every address of each nginx node",
            "swarm's published ports (host mode here) take no bind address",
            "firewall HTTP_PORT on the nodes, then set COMPOSE_PUBLISH_ADDRESS=0.0.0.0 to say so",
            values={
                "COMPOSE_PUBLISH_ADDRESS": settings.compose_publish_address,
                "HTTP_PORT": str(settings.http_port),
            },
        )
    ]


def swarm_hardening(settings: Settings, host: HostFacts) -> list[Finding]:
    if host.swarm is None:
        return []
    return [
        Finding(
            "swarm hardening",
            "warning",
            "security_opt no-new-privileges is not applied to swarm tasks",
            "`docker stack deploy` ignores security_opt; cap_drop ALL, the non-root users and the read-only "
            "root filesystems still apply",
            "accept it, or run the containers with RUNTIME=docker where it applies",
        )
    ]


def unix_socket_on_swarm(settings: Settings, host: HostFacts) -> list[Finding]:
    bind = settings.gunicorn_bind
    if unix_socket_path(bind) is None or host.swarm is None:
        return []
    return [
        Finding(
            "unix socket",
            "error",
            f"GUNICORN_BIND={bind} on swarm",
            "swarm places app and nginx tasks on any node, and a socket file reaches no other node",
            "use a host:port bind (the swarm stack's nginx goes to tasks.app:8000)",
            values={"GUNICORN_BIND": bind},
        )
    ]


def unix_socket_findings(settings: Settings, host: HostFacts) -> list[Finding]:
    """GUNICORN_BIND=unix:path: nginx connects to the socket, so host:port upstream knobs do not apply, and
    uvicorn sees no peer address. In containers deploy/compose.unix.yml sets both ends; swarm cannot."""
    bind = settings.gunicorn_bind
    if unix_socket_path(bind) is None or host.swarm is not None:
        return []
    if host.compose:
        return []  # the overlay fixes the socket's path, nginx's upstream and the trusted peers
    findings = []
    if settings.nginx_upstream and settings.nginx_upstream != bind:
        findings.append(
            Finding(
                "no effect",
                "warning",
                f"NGINX_UPSTREAM={settings.nginx_upstream} set while GUNICORN_BIND={bind}",
                "with a unix bind nginx connects to gunicorn's socket: a host:port upstream does not apply",
                "unset NGINX_UPSTREAM",
                values={"NGINX_UPSTREAM": settings.nginx_upstream, "GUNICORN_BIND": bind},
            )
        )
    trusted = settings.gunicorn_forwarded_allow_ips
    if trusted.strip() != "*":
        findings.append(
            Finding(
                "client address",
                "warning",
                f"GUNICORN_FORWARDED_ALLOW_IPS={trusted} with GUNICORN_BIND={bind}",
                "uvicorn sees no peer address on a unix socket, so it believes nginx's X-Forwarded-For from "
                "no one and the app sees no client address",
                "set GUNICORN_FORWARDED_ALLOW_IPS='*': on a unix socket only processes allowed into its "
                "directory can connect at all",
                values={"GUNICORN_FORWARDED_ALLOW_IPS": trusted, "GUNICORN_BIND": bind},
            )
        )
    return findings


Rule = Callable[[Settings, HostFacts], list[Finding]]

# failure-modes.md's ordering rules, one check each: `ok` or `error` per comparison.
RULES: tuple[Rule, ...] = (
    keepalive_order,
    websocket_ping_order,
    request_timeout_order,
    graceful_shutdown_order,
    backplane_drain,
    blocking_vs_heartbeat,
    startup_vs_heartbeat,
    connection_capacity,
    concurrency_headroom,
)
# What a runtime needs of the knobs, beyond the ordering rules: `error` when it is missing.
REQUIREMENTS: tuple[Rule, ...] = (swarm_images, unix_socket_on_swarm)
# Settings that do nothing or are unwise: `warning` only, never a refusal.
ADVICE: tuple[Rule, ...] = (
    settings_without_effect,
    drain_fits_the_grace,
    backplane_before_the_deadline,
    swarm_knobs_without_effect,
    swarm_engine_unknown,
    swarm_engine_too_old,
    swarm_tls,
    swarm_publish,
    swarm_hardening,
    unix_socket_findings,
)


def evaluate(settings: Settings, host: HostFacts) -> list[Finding]:
    return [finding for rule in RULES + REQUIREMENTS + ADVICE for finding in rule(settings, host)]


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity != "ok"]


UNSAFE_OVERRIDE = "ALLOW_UNSAFE_CONFIG"


def unsafe_config_allowed(environ: Mapping[str, str]) -> bool:
    return environ.get(UNSAFE_OVERRIDE, "") in ("1", "yes", "true")
