"""Every knob of the stack — app, gunicorn, uvicorn, nginx, compose — defined once.

Each field is one environment variable (its name upper-cased). `unit`, `layer` and the description are
the documentation: `python -m deploy.stackctl settings-table` renders docs/SETTINGS.md from them and a
test keeps the two identical.

Where values come from, strongest first: a STACK_ENV_FILE (rendered by the local runtime from defaults,
profile, `.env` and the environment at `make up` / `make reload` time, so a reload sees new values even
though the gunicorn master's own environment cannot change), then the process environment, then the
defaults below.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from service import websocket_paths

Layer = Literal[
    "stack",
    "app",
    "rooms",
    "redis",
    "gunicorn",
    "uvicorn",
    "nginx",
    "compose",
    "swarm",
    "prometheus",
    "locust",
]
Tool = Literal["loadtest", "drill", "bench", "sweep", "timeout-lab"]
OUR_WORKER_CLASS = "service.platform.worker.UvicornWorker"
DEMO_APP = "service.app:app"
# A URL path nginx can name in a `location` unquoted: letters, digits, `.`, `_`, `~`, `-` and slashes.
PLATFORM_PATH = r"^/[A-Za-z0-9._~/-]*$"
APP_MODULE_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\(\))?$")


UNIX_PREFIX = "unix:"
# Linux's sockaddr_un.sun_path holds 108 bytes with the terminating NUL (macOS: 104): longer paths fail.
SUN_PATH_MAX = 107


def unix_socket_path(address: str) -> str | None:
    """The path of a `unix:/path` address (as gunicorn and nginx write it); None for host:port."""
    return address[len(UNIX_PREFIX) :] if address.startswith(UNIX_PREFIX) else None


def knob(default: Any, unit: str, layer: Layer, effect: str, **kwargs: Any) -> Any:
    return Field(default, description=effect, json_schema_extra={"unit": unit, "layer": layer}, **kwargs)


def tool_input(
    default: Any, unit: str, tool: Tool, effect: str, also: dict[Tool, Any] | None = None, **kwargs: Any
) -> Any:
    """A ToolInputs row: `tool` reads it; `also` maps other tools reading it to their own default."""
    extra: dict[str, Any] = {"unit": unit, "defaults": {tool: default, **(also or {})}}
    return Field(default, description=effect, json_schema_extra=extra, **kwargs)


def usable_cpus() -> int:
    """CPUs this process may really use: affinity mask, further capped by a cgroup v2 `cpu.max` quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota != "max":
        cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    return cpus


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # --- stack -------------------------------------------------------------------------------------
    http_port: int = knob(
        8080,
        "port",
        "stack",
        "The one public port: nginx listens here (local) or compose publishes it.",
        ge=1,
        le=65535,
    )
    https_port: int = knob(
        8443,
        "port",
        "stack",
        "The HTTPS port when NGINX_TLS=1: nginx listens here (local) or compose publishes it; HTTP_PORT then "
        "only redirects to it. Unused without TLS.",
        ge=1,
        le=65535,
    )
    runtime: Literal["auto", "docker", "local", "swarm"] = knob(
        "auto",
        "-",
        "stack",
        "Where `make up` runs the stack: docker (compose), local (processes on this host), swarm (a "
        "`docker stack` on a Docker swarm, docs/SWARM.md), or auto = docker when an engine is reachable "
        "(never swarm).",
    )
    profile: str = knob(
        "default", "-", "stack", "Tuning profile from deploy/profiles/<name>.env applied under .env."
    )
    log_max_mb: int = knob(
        20,
        "MiB",
        "stack",
        "Size at which a log file rotates: the local runtime's gunicorn.log, nginx.log and nginx-error.log, "
        "and each container's json-file log. At most LOG_FILES x this stays on disk per log, however long a "
        "soak runs.",
        ge=1,
    )
    log_files: int = knob(
        3,
        "files",
        "stack",
        "Files per log, the live one included (gunicorn.log, gunicorn.log.1, ...; Docker's max-file).",
        ge=2,
    )
    monitoring: int = knob(
        0,
        "0/1",
        "stack",
        "1 = `make up` also starts Prometheus (rules: deploy/prometheus/rules.yml) scraping the app and "
        "nginx (through prometheus-nginx-exporter), and prints its URL: processes of this host (local), "
        "the compose profile `monitoring` (docker), or two more stack services (swarm).",
        ge=0,
        le=1,
    )

    # --- app: which app, and the platform around it (service/platform/) ------------------------------
    app_module: str = knob(
        DEMO_APP,
        "module:attribute",
        "app",
        "The ASGI app gunicorn serves, inside the platform: `package.module:app`, or a factory called once "
        "per worker, `package.module:create_app()`. The default is the demo service. "
        "`python -m service.platform.loader` loads it and says in one line what is wrong.",
    )
    app_src: str = knob(
        "",
        "path",
        "app",
        "The directory holding the app's code, put first on the import path (relative paths are taken from "
        "the directory gunicorn starts in). Empty = the repository root, where the demo lives. Docker and "
        "swarm copy it into the app image (/app/src).",
    )
    app_requirements: str = knob(
        "",
        "path",
        "app",
        "A requirements file with the app's own dependencies (its framework included), installed with the "
        "platform's pins into a virtualenv of the app's own (local: .run/venvs/app-<hash>) or the app image "
        "(docker, swarm); a conflict with a pin stops `make up` naming both. Empty = the demo's (the `demo` "
        "extra of pyproject.toml; local: the tooling virtualenv).",
    )
    app_startup_timeout: float = knob(
        20.0,
        "s",
        "app",
        "How long the app's lifespan startup may take in each worker; past it, or when startup raises, the "
        "worker exits and gunicorn stops instead of restarting it. Below GUNICORN_TIMEOUT: gunicorn's "
        "heartbeat does not tick during startup.",
        gt=0,
    )
    app_liveness_path: str = knob(
        "/healthz",
        "path",
        "app",
        "Answered by the platform before the app: 200 while the worker's event loop runs.",
        pattern=PLATFORM_PATH,
    )
    app_readiness_path: str = knob(
        "/readyz",
        "path",
        "app",
        "Answered by the platform before the app: 200, or a JSON 503 while the worker drains (the container "
        "healthcheck reads it).",
        pattern=PLATFORM_PATH,
    )
    app_metrics_path: str = knob(
        "/metrics",
        "path",
        "app",
        "Prometheus exposition of every worker, answered by the platform before the app. nginx refuses it on "
        "the public port and serves it as /metrics on NGINX_STATUS_PORT.",
        pattern=PLATFORM_PATH,
    )
    app_metrics_max_routes: int = knob(
        100,
        "routes",
        "app",
        "Distinct route templates per worker that get their own `route` label in the request metrics; "
        "requests on further routes are counted as `overflow` (no route matched: `unmatched`). Bounds the "
        "series an app with many routes creates.",
        ge=1,
    )

    app_loop_lag_interval: float = knob(
        0.1,
        "s",
        "app",
        "How often each worker's event-loop probe fires; how late it fires is the loop's lag, exported per "
        "worker in the metrics (`app_event_loop_lag_*`) with the worker's in-flight requests, WebSockets, "
        "memory and CPU, written once a second. 0 = off (those gauges are then absent).",
        ge=0,
        le=10,
    )

    # --- app ---------------------------------------------------------------------------------------
    app_request_timeout: float = knob(
        15.0,
        "s",
        "app",
        "Time from request to first response byte before the platform answers a JSON 504 for the app. Keep "
        "it below NGINX_PROXY_READ_TIMEOUT so clients get the app's answer, not nginx's.",
        gt=0,
    )
    app_max_delay: float = knob(
        60.0,
        "s",
        "app",
        "Largest `delay`/`interval` the demo routes accept (422 above). Above APP_REQUEST_TIMEOUT so a "
        "timeout can be shown on purpose.",
        gt=0,
    )
    app_threadpool_tokens: int = knob(
        40,
        "threads",
        "app",
        "Threads per worker shared by `def` routes, sync dependencies and file I/O (AnyIO's default is 40). "
        "Raise it when /api/sync queues; each thread costs memory.",
        ge=1,
        le=10_000,
    )
    app_max_text_length: int = knob(
        10_000, "chars", "app", "Longest `text` POST /api/echo accepts (422 above).", ge=1
    )
    app_max_cpu_work: int = knob(
        5_000_000, "iterations", "app", "Largest `work` GET /api/cpu accepts (422 above).", ge=1
    )
    app_max_stream_chunks: int = knob(
        1_000, "chunks", "app", "Largest `chunks` GET /api/stream accepts (422 above).", ge=1
    )
    app_max_stream_seconds: float = knob(
        60.0,
        "s",
        "app",
        "Longest GET /api/stream may last: `chunks` x `interval` above it is refused with a 422 naming both "
        "(each alone may reach APP_MAX_STREAM_CHUNKS and APP_MAX_DELAY). One client otherwise holds a "
        "connection for hours.",
        gt=0,
    )
    app_log_level: Literal["debug", "info", "warning", "error"] = knob(
        "info", "-", "app", "Level of the app's JSON access and error log lines."
    )
    app_access_log: int = knob(
        0,
        "0/1",
        "app",
        "The app's own JSON line per request (route, status, time inside the app). Off by default: nginx "
        "already writes one line per request with the same request id and the upstream times, and the "
        "app's line cost ~16 % of a worker's CPU at full load. 1 = on, to see requests that bypass nginx.",
        ge=0,
        le=1,
    )
    app_opentelemetry: int = knob(
        0,
        "0/1",
        "app",
        "FastAPI's native OpenTelemetry (spans, metrics and logs through the global providers, when an SDK "
        "configures them). Off by default: the blueprint's metrics are Prometheus' (/metrics), and FastAPI "
        "asks the three providers on every request whether they are configured, ~34 k instructions or 6 % "
        "of a request even with no SDK installed (docs/PERFORMANCE.md). 1 = on.",
        ge=0,
        le=1,
    )
    app_gc_threshold: str = knob(
        "50000,20,100",
        "objects,-,-",
        "app",
        "Each worker's `gc.set_threshold(gen0, gen1, gen2)`, set after startup together with `gc.freeze()` "
        "(what was loaded is never scanned again). CPython's 700,10,10 collects every 700 new objects, and "
        "with thousands of requests in flight every collection walks their live objects: 5000 held "
        "/api/slow requests cost 0.67-0.78 ms of app CPU each with it, 0.36-0.38 with this "
        "(docs/PERFORMANCE.md). Garbage in reference cycles lives longer with a higher gen0; 700,10,10 "
        "is CPython's own.",
    )
    app_demo_routes: int = knob(
        1,
        "0/1",
        "app",
        "The routes that stall or burn a worker on request (/api/blocking, /api/cpu, /api/slow, /api/sync), "
        "/api/info (pid, hostname, bind, trusted proxies, every timeout) and the Swagger UI (/docs). 1 = "
        "served; 0 = nginx answers its JSON 404 for them without asking the app, and the app does not "
        "serve them either: for a stack that others can reach. /openapi.json stays.",
        ge=0,
        le=1,
    )
    app_expected_blocking: float = knob(
        1.0,
        "s",
        "app",
        "Planning figure, read only by `make check`: the longest your code may block one event loop at once "
        "(sync calls inside `async def`, big JSON encodes). Must stay below GUNICORN_TIMEOUT or gunicorn "
        "kills the worker. /api/blocking ignores it on purpose: it blocks up to APP_MAX_DELAY.",
        ge=0,
    )
    app_expected_websockets: int = knob(
        100,
        "connections",
        "app",
        "Planning figure, read only by `make check`: WebSockets one worker holds at peak. "
        "UVICORN_LIMIT_CONCURRENCY must exceed them plus nginx's pooled idle upstream connections.",
        ge=0,
    )

    # --- rooms: WebSocket rooms across workers and replicas (service/rooms/) --------------------------
    rooms_history: int = knob(
        1000,
        "messages",
        "rooms",
        "Messages each room keeps for members that resume with `after` (XADD MAXLEN ~: Redis may keep a few "
        "more). A member away for more than this many messages misses the older ones.",
        ge=1,
    )
    rooms_history_seconds: int = knob(
        300,
        "s",
        "rooms",
        "Age past which a room's messages are dropped (XTRIM MINID ~), and silence after which the whole "
        "room is deleted (EXPIRE): a member away longer misses what is older.",
        ge=1,
    )
    rooms_send_queue: int = knob(
        256,
        "messages",
        "rooms",
        "Messages waiting to be sent to one member. A member whose queue is full reads slower than its room "
        "talks: it is closed with 1013 and may resume with `after`; the others never wait for it.",
        ge=1,
    )
    rooms_read_block: float = knob(
        0.5,
        "s",
        "rooms",
        "How long each worker's reader waits in one XREAD BLOCK for news of its rooms (a room joined "
        "meanwhile interrupts it). A stalled Redis is noticed after this + REDIS_TIMEOUT; with it below "
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN a draining worker's reader ends in time (`make check`).",
        gt=0,
    )
    rooms_max_message_bytes: int = knob(
        16_384,
        "bytes",
        "rooms",
        "Largest `data` of one message, as compact JSON. Above: POST answers 413 `message_too_large`, a "
        "member that sends one is closed with 1009.",
        ge=1,
    )
    rooms_max_name_length: int = knob(
        64,
        "chars",
        "rooms",
        "Longest room name (letters, digits, `.`, `_`, `~`, `-`). Above or other characters: POST 422, a "
        "WebSocket closed with 1008.",
        ge=1,
        le=200,
    )
    rooms_publish_rate: float = knob(
        20.0,
        "messages/s",
        "rooms",
        "Messages a member may send on its WebSocket per second (a bucket of as many); faster, it is closed "
        "with 1008. 0 = unlimited. POST is limited per client IP by nginx (NGINX_LIMIT_REQ_*).",
        ge=0,
    )
    rooms_max_rooms: int = knob(
        1000,
        "rooms",
        "rooms",
        "Rooms one worker follows at once (every XREAD names each of them). A member joining one more is "
        "closed with 1013.",
        ge=1,
    )

    # --- redis: the rooms' backplane ------------------------------------------------------------------
    redis_url: str = knob(
        "",
        "URL",
        "redis",
        "The Redis (or Valkey, >= 6.2) the rooms use: redis://[user:password@]host:port/db, rediss:// for "
        "TLS, unix:///path. Empty = the stack's own: a redis-server the local runtime starts on "
        "127.0.0.1:REDIS_PORT, the `redis` service in compose and swarm. Set, the stack starts none.",
    )
    redis_port: int = knob(
        6379,
        "port",
        "redis",
        "Port of the local runtime's redis-server, on 127.0.0.1 only (compose: 6379 inside the network, "
        "never published). Unused with REDIS_URL.",
        ge=1,
        le=65535,
    )
    redis_timeout: float = knob(
        2.0,
        "s",
        "redis",
        "How long the app waits for Redis to connect or answer one command: past it a publish answers 503 "
        "`backplane_unavailable` and a member is closed with 1011. + ROOMS_READ_BLOCK below "
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN, and best below APP_REQUEST_TIMEOUT (`make check`). A worker "
        "starved of CPU answers late too: measured, 1 s turned publishes into 503s on an overloaded host.",
        gt=0,
    )

    # --- gunicorn ----------------------------------------------------------------------------------
    web_concurrency: int = knob(
        0,
        "processes",
        "gunicorn",
        "Worker processes. 0 = the CPUs this process may use (affinity and cgroup quota, not cpu_count()). "
        "IO-bound: one per CPU is enough; CPU-bound: one per CPU, never more.",
        ge=0,
        le=256,
    )
    gunicorn_bind: str = knob(
        "127.0.0.1:8000",
        "host:port or unix:path",
        "gunicorn",
        "Where gunicorn listens. Only nginx should reach it: keep it on loopback locally; compose binds "
        "0.0.0.0:8000 on the internal network and publishes nothing. `unix:/absolute/path.sock` (at most "
        "107 bytes): a unix socket, nginx on the same host connects to it and NGINX_UPSTREAM does not apply "
        "(compose: deploy/compose.unix.yml).",
    )
    gunicorn_worker_class: str = knob(
        OUR_WORKER_CLASS,
        "import path",
        "gunicorn",
        "Worker class. Ours passes the UVICORN_* knobs through; `asgi` is gunicorn's own ASGI worker.",
    )
    gunicorn_timeout: int = knob(
        30,
        "s",
        "gunicorn",
        "Heartbeat deadline for async workers (not a request timeout): a worker whose event loop is blocked "
        "this long is killed and every request on it fails with 502.",
        ge=1,
    )
    gunicorn_graceful_timeout: int = knob(
        25,
        "s",
        "gunicorn",
        "After TERM/HUP, how long old workers may finish in-flight work before SIGKILL. Above "
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN, below COMPOSE_STOP_GRACE_PERIOD.",
        ge=1,
    )
    gunicorn_keepalive: int = knob(
        20,
        "s",
        "gunicorn",
        "How long a worker keeps an idle keep-alive connection (passed to uvicorn as timeout_keep_alive). "
        "Must exceed NGINX_UPSTREAM_KEEPALIVE_TIMEOUT or nginx reuses closing sockets: sporadic 502.",
        ge=1,
    )
    gunicorn_max_requests: int = knob(
        1_000_000,
        "requests",
        "gunicorn",
        "Recycle a worker after this many HTTP requests (0 = never; WebSockets do not count), to contain "
        "slow leaks. Loss-free at any value (the worker drains), but each recycle boots a worker and closes "
        "its WebSockets with 1012. Measured: RSS flat over 230,000 requests per worker; 10,000 recycled a "
        "worker every 4 s at 2,500 req/s. 1,000,000 is ~7 min at that rate; lower it only if you see growth.",
        ge=0,
    )
    gunicorn_max_requests_jitter: int = knob(
        200_000,
        "requests",
        "gunicorn",
        "Random extra requests per worker so workers do not all recycle at once (10-50 % of max).",
        ge=0,
    )
    gunicorn_backlog: int = knob(
        2048,
        "connections",
        "gunicorn",
        "Listen queue of not-yet-accepted connections; the kernel caps it at net.core.somaxconn.",
        ge=1,
    )
    gunicorn_forwarded_allow_ips: str = knob(
        "127.0.0.1",
        "IPs/CIDRs",
        "gunicorn",
        "Peers whose X-Forwarded-For/Proto headers are believed: nginx's address only. `*` lets any peer "
        "that reaches the app port choose its client address.",
    )
    gunicorn_log_level: Literal["debug", "info", "warning", "error", "critical"] = knob(
        "info", "-", "gunicorn", "Level of gunicorn's own (master and worker lifecycle) log."
    )

    # --- uvicorn (through our worker class) --------------------------------------------------------
    uvicorn_limit_concurrency: int = knob(
        1000,
        "connections",
        "uvicorn",
        "Per worker: above this many connections+tasks (idle keep-alive and WebSockets count) uvicorn "
        "answers 503 at once instead of queueing. 0 = unlimited.",
        ge=0,
    )
    uvicorn_ws_ping_interval: float = knob(
        20.0,
        "s",
        "uvicorn",
        "Server pings on idle WebSockets; ping interval + timeout must stay below NGINX_WS_READ_TIMEOUT "
        "or nginx cuts quiet sockets (client sees 1006).",
        gt=0,
    )
    uvicorn_ws_ping_timeout: float = knob(
        20.0, "s", "uvicorn", "Close a WebSocket whose peer does not answer a ping in this time.", gt=0
    )
    uvicorn_ws_max_size: int = knob(
        1_048_576,
        "bytes",
        "uvicorn",
        "Largest WebSocket message; larger ones close the socket with 1009.",
        ge=1,
    )
    uvicorn_ws_per_message_deflate: int = knob(
        1,
        "0/1",
        "uvicorn",
        "Compress WebSocket messages (permessage-deflate) for clients that ask, as browsers do. Each such "
        "socket keeps zlib state: measured ~83 KiB of worker memory per open WebSocket, ~40 KiB with 0 "
        "(docs/PERFORMANCE.md). 0 for many sockets with small messages.",
        ge=0,
        le=1,
    )
    uvicorn_ws: Literal["auto", "websockets", "websockets-sansio", "wsproto"] = knob(
        "auto",
        "-",
        "uvicorn",
        "WebSocket implementation. auto = websockets-sansio (uvicorn 0.54's pick with websockets "
        "installed): no task per socket, pings on timers. websockets = that library's older asyncio "
        "protocol: ~13 KiB more per idle socket. wsproto: about the memory of sansio (docs/PERFORMANCE.md).",
    )
    uvicorn_timeout_graceful_shutdown: int = knob(
        20,
        "s",
        "uvicorn",
        "On shutdown, how long a worker waits for open connections before closing them (WebSockets get "
        "1012). Below GUNICORN_GRACEFUL_TIMEOUT.",
        ge=1,
    )
    uvicorn_ws_close_spread: float = knob(
        10.0,
        "s",
        "uvicorn",
        "When a worker exits (reload, recycle, stop) it closes its WebSockets with 1012 one by one, evenly "
        "over this many seconds, so their clients do not all reconnect at once; 0 = all at once. Capped at "
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN - 1.",
        ge=0,
    )
    uvicorn_loop: Literal["auto", "asyncio", "uvloop"] = knob(
        "auto", "-", "uvicorn", "Event loop implementation (auto = uvloop when installed)."
    )
    uvicorn_http: Literal["auto", "h11", "httptools"] = knob(
        "auto", "-", "uvicorn", "HTTP/1.1 parser (auto = httptools when installed)."
    )

    # --- nginx -------------------------------------------------------------------------------------
    nginx_worker_processes: str = knob(
        "auto",
        "processes",
        "nginx",
        "nginx worker processes; auto = one per CPU.",
        pattern=r"^(auto|[1-9][0-9]*)$",
    )
    nginx_worker_connections: int = knob(
        4096,
        "connections",
        "nginx",
        "Connections per nginx worker, client and upstream sides together (a proxied request uses two).",
        ge=16,
    )
    nginx_worker_rlimit_nofile: int = knob(
        10_000,
        "files",
        "nginx",
        "Open-file limit of each nginx worker; at least NGINX_WORKER_CONNECTIONS and within the host's "
        "`ulimit -n` / compose ulimits.nofile.",
        ge=64,
    )
    nginx_listen_port: int = knob(
        0,
        "port",
        "nginx",
        "Port nginx listens on; 0 = HTTP_PORT (local). Compose sets 8080 inside the container.",
        ge=0,
        le=65535,
    )
    nginx_listen_address: str = knob(
        "127.0.0.1",
        "IP",
        "nginx",
        "Address nginx's public ports listen on (local runtime): loopback by default; 0.0.0.0 to serve other "
        "machines. Compose listens on 0.0.0.0 inside the container and publishes on COMPOSE_PUBLISH_ADDRESS.",
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$",
    )
    nginx_https_listen_port: int = knob(
        0,
        "port",
        "nginx",
        "Port nginx's TLS server listens on; 0 = HTTPS_PORT (local). Compose sets 8443 inside the container.",
        ge=0,
        le=65535,
    )
    nginx_status_port: int = knob(
        8081,
        "port",
        "nginx",
        "Loopback-only port for stub_status and /metrics; never published.",
        ge=1,
        le=65535,
    )
    nginx_status_listen_address: str = knob(
        "127.0.0.1",
        "IP",
        "nginx",
        "Address of the status port. Loopback locally; compose listens on 0.0.0.0 inside the container "
        "(never published) so that a scraper on the compose network can reach it.",
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$",
    )
    nginx_status_allow: str = knob(
        "127.0.0.1",
        "IP/CIDR",
        "nginx",
        "Who may read the status port besides 127.0.0.1 (nginx `allow`; any other client gets a JSON 403). "
        "Compose sets COMPOSE_SUBNET.",
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?$",
    )
    nginx_upstream: str = knob(
        "",
        "host:port or unix:path",
        "nginx",
        "Where nginx sends requests; empty = GUNICORN_BIND (local), and always GUNICORN_BIND when that is a "
        "unix socket. Compose sets app:8000.",
    )
    nginx_upstream_keepalive: int = knob(
        32, "connections", "nginx", "Idle keep-alive connections to the app each nginx worker keeps.", ge=1
    )
    nginx_upstream_keepalive_timeout: int = knob(
        15,
        "s",
        "nginx",
        "How long nginx keeps an idle upstream connection. Must stay below GUNICORN_KEEPALIVE.",
        ge=1,
    )
    nginx_upstream_keepalive_requests: int = knob(
        1000, "requests", "nginx", "Requests over one upstream connection before nginx closes it.", ge=1
    )
    nginx_proxy_connect_timeout: int = knob(
        5, "s", "nginx", "Time to open a connection to the app before 502.", ge=1
    )
    nginx_proxy_read_timeout: int = knob(
        30,
        "s",
        "nginx",
        "Longest silence between two reads from the app on HTTP routes before nginx answers 504. Above "
        "APP_REQUEST_TIMEOUT, below the load client's timeout.",
        ge=1,
    )
    nginx_proxy_send_timeout: int = knob(
        30, "s", "nginx", "Longest pause while sending a request to the app.", ge=1
    )
    nginx_ws_read_timeout: int = knob(
        75,
        "s",
        "nginx",
        "Longest silence on a WebSocket tunnel before nginx closes it. Above UVICORN_WS_PING_INTERVAL + "
        "UVICORN_WS_PING_TIMEOUT.",
        ge=1,
    )
    nginx_websocket_paths: str = knob(
        "/ws/",
        "paths",
        "nginx",
        "Where the app serves WebSockets (space-separated): nginx proxies these with NGINX_WS_READ_TIMEOUT, "
        "every other path with the HTTP timeouts (a WebSocket there is cut after NGINX_PROXY_READ_TIMEOUT "
        "of silence). `/chat/` = every path under it and /chat itself; `/chat/socket` = that path only. Not "
        "`/`, nor a platform path (APP_*_PATH). Empty = none.",
    )
    nginx_client_max_body_size: str = knob(
        "1m",
        "size",
        "nginx",
        "Largest request body; larger gets a JSON 413 from nginx.",
        pattern=r"^[0-9]+[kKmMgG]?$",
    )
    nginx_client_header_timeout: int = knob(
        10, "s", "nginx", "Time a client has to send its headers (slowloris guard; uvicorn has none).", ge=1
    )
    nginx_client_body_timeout: int = knob(
        10, "s", "nginx", "Longest pause between two body reads from a client (408 after).", ge=1
    )
    nginx_keepalive_timeout: int = knob(
        65, "s", "nginx", "Idle keep-alive on the client side of nginx.", ge=0
    )
    nginx_limit_req_enabled: int = knob(
        0,
        "0/1",
        "nginx",
        "Per-client-IP request rate limit on /api/ (429 above the rate and burst).",
        ge=0,
        le=1,
    )
    nginx_limit_req_rate: int = knob(
        100, "requests/s", "nginx", "Rate per client IP when NGINX_LIMIT_REQ_ENABLED=1.", ge=1
    )
    nginx_limit_req_burst: int = knob(
        200,
        "requests",
        "nginx",
        "Requests above the rate accepted at once before 429 (nginx needs >= 1).",
        ge=1,
    )
    nginx_limit_conn_enabled: int = knob(
        0, "0/1", "nginx", "Per-client-IP concurrent connection limit (503 above it).", ge=0, le=1
    )
    nginx_limit_conn: int = knob(
        100, "connections", "nginx", "Concurrent connections per client IP when enabled.", ge=1
    )
    nginx_tls: int = knob(
        0,
        "0/1",
        "nginx",
        "TLS at nginx: 1 = HTTPS (HTTP/2, TLS 1.2+) on HTTPS_PORT, HTTP_PORT answers 308 to it, WebSockets "
        "as wss://; 0 = plain HTTP on HTTP_PORT only.",
        ge=0,
        le=1,
    )
    nginx_tls_cert: str = knob(
        "",
        "path",
        "nginx",
        "PEM certificate (leaf first, then intermediates) served with NGINX_TLS=1. Empty = `make up` "
        "creates a local CA and a certificate for localhost, nginx.localhost (compose), 127.0.0.1 and ::1 "
        "in <run dir>/tls and says how to trust it.",
    )
    nginx_tls_key: str = knob(
        "",
        "path",
        "nginx",
        "PEM private key of NGINX_TLS_CERT (unencrypted; set both or neither). Under Docker the nginx user "
        "(uid 101) must be able to read it.",
    )
    nginx_hsts_max_age: int = knob(
        0,
        "s",
        "nginx",
        "Strict-Transport-Security max-age, sent on HTTPS responses only; 0 = not sent. Browsers then refuse "
        "plain HTTP to that host name on every port for this long: keep 0 for localhost; a year (31536000) "
        "once HTTPS works for a real name.",
        ge=0,
    )
    nginx_server_names: str = knob(
        "localhost 127.0.0.1 [::1]",
        "names",
        "nginx",
        "Host names nginx serves (its `server_name`, space-separated; `*.example.com` and IPs allowed). A "
        "request for any other Host gets a JSON 421 from nginx and never reaches the app, which builds "
        "absolute URLs (redirects) from Host. Compose adds nginx and nginx.localhost, the names its "
        "containers use.",
        pattern=r"^[A-Za-z0-9.*_:\[\]-]+( [A-Za-z0-9.*_:\[\]-]+)*$",
    )
    nginx_ocsp_stapling: int = knob(
        0,
        "0/1",
        "nginx",
        "With NGINX_TLS=1: nginx fetches the OCSP answer for NGINX_TLS_CERT from its CA and staples it to "
        "the handshake. Needs a given certificate with its full chain and an OCSP responder URL (`make "
        "check` refuses it with the local CA) and NGINX_OCSP_RESOLVER.",
        ge=0,
        le=1,
    )
    nginx_ocsp_resolver: str = knob(
        "127.0.0.11",
        "IP",
        "nginx",
        "DNS server nginx asks for the OCSP responder's address with NGINX_OCSP_STAPLING=1. The default is "
        "Docker's (compose, swarm); on the local runtime your resolver, e.g. 127.0.0.53.",
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}(:[0-9]{1,5})?$",
    )
    nginx_run_dir: str = knob(
        "/tmp/nginx", "path", "nginx", "Writable directory for nginx's pid and temp files."
    )
    nginx_access_log: str = knob("/dev/stdout", "path", "nginx", "JSON access log destination.")
    nginx_error_log: str = knob("/dev/stderr", "path", "nginx", "Error log destination.")

    # --- compose -----------------------------------------------------------------------------------
    compose_stop_grace_period: int = knob(
        30,
        "s",
        "compose",
        "Seconds `docker compose stop` waits before SIGKILL; above GUNICORN_GRACEFUL_TIMEOUT or the app "
        "exits 137.",
        ge=1,
    )
    compose_somaxconn: int = knob(
        4096,
        "connections",
        "compose",
        "net.core.somaxconn set in the app container (compose `sysctls`; containers may otherwise get 128). "
        "GUNICORN_BACKLOG must not exceed it.",
        ge=16,
    )
    compose_nofile: int = knob(
        16_384,
        "files",
        "compose",
        "Open-file limit of the containers (compose `ulimits.nofile`). NGINX_WORKER_RLIMIT_NOFILE must not "
        "exceed it, and the Docker engine cannot set more than its own hard limit.",
        ge=64,
    )
    compose_subnet: str = knob(
        "172.28.80.0/24",
        "CIDR",
        "compose",
        "Subnet of the compose network. The app trusts X-Forwarded-For only from it (compose sets "
        "GUNICORN_FORWARDED_ALLOW_IPS to it); change it if it overlaps a network of your host.",
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$",
    )
    compose_publish_address: str = knob(
        "127.0.0.1",
        "IP",
        "compose",
        "Host address compose publishes nginx's HTTP_PORT on: loopback by default; 0.0.0.0 to serve other "
        "machines (Docker-published ports bypass ufw-style host firewalls).",
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$",
    )

    # --- swarm (RUNTIME=swarm; deploy/swarm.yml, docs/SWARM.md) ------------------------------------
    swarm_registry: str = knob(
        "",
        "host[:port][/path]",
        "swarm",
        "Registry the images are pushed to and every node pulls from (REGISTRY/blueprint-app:TAG, TAG = the "
        "image's content id). Empty = the images exist on this node only: a single-node swarm.",
        pattern=r"^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._/-][a-z0-9]+)*)?)?$",
    )
    swarm_nginx_constraint: str = knob(
        "",
        "constraint",
        "swarm",
        "Placement constraint for nginx, e.g. `node.labels.blueprint.edge == true`: nginx (one per matching "
        "node, publishing HTTP_PORT there) runs only on edge nodes. Empty = on every node.",
        pattern=r"^((node|engine)\.[A-Za-z0-9._-]+ *(==|!=) *[^ ]+)?$",
    )
    swarm_app_replicas: int = knob(
        2,
        "tasks",
        "swarm",
        "App tasks `make up` deploys. A running stack keeps its `make scale` count unless this is given in "
        "the environment of that `make up`/`make reload`.",
        ge=1,
    )
    swarm_app_cpus: float = knob(
        1.0,
        "CPUs",
        "swarm",
        "CPU limit of each app task. With WEB_CONCURRENCY=0 gunicorn starts one worker per usable CPU (the "
        "quota counts under cgroup v2 only).",
        gt=0,
    )
    swarm_app_memory: str = knob(
        "1g",
        "bytes",
        "swarm",
        "Memory limit of each app task (k, m or g suffix); the kernel kills a task above it. Size it for "
        "the workers the task starts.",
        pattern=r"^[0-9]+[kmg]?$",
    )
    swarm_stop_delay: int = knob(
        3,
        "s",
        "swarm",
        "After swarm's TERM an app task serves this long before gunicorn gets the TERM: swarm drops the task "
        "from DNS only 2 s before, and nginx must re-resolve and reload first. GUNICORN_GRACEFUL_TIMEOUT + "
        "this must stay below COMPOSE_STOP_GRACE_PERIOD.",
        ge=0,
        le=60,
    )
    swarm_locust_workers: int = knob(
        0,
        "tasks",
        "swarm",
        "Locust as stack services: a locust-master (its web UI not published: docs/SWARM.md) and this many "
        "locust-worker tasks spread over the nodes. 0 = no Locust services in the stack.",
        ge=0,
        le=64,
    )

    # --- prometheus (MONITORING=1; deploy/prometheus/) -----------------------------------------------
    prometheus_port: int = knob(
        9090,
        "port",
        "prometheus",
        "Port of Prometheus's web UI and API on 127.0.0.1 (local: it listens there; docker: published there; "
        "swarm: not published).",
        ge=1,
        le=65535,
    )
    prometheus_nginx_exporter_port: int = knob(
        9113,
        "port",
        "prometheus",
        "Port prometheus-nginx-exporter listens on, on 127.0.0.1 (local runtime; in a container it is 9113, "
        "never published).",
        ge=1,
        le=65535,
    )
    prometheus_scrape_interval: int = knob(
        5,
        "s",
        "prometheus",
        "How often Prometheus scrapes the app and the exporter and evaluates its rules (Prometheus's own "
        "default is 60 s). The per-worker gauges change once a second; the rules' windows assume <= 15 s.",
        ge=1,
        le=15,
    )
    prometheus_retention: str = knob(
        "1d",
        "duration",
        "prometheus",
        "How long Prometheus keeps samples (--storage.tsdb.retention.time): in the run dir (local) or on "
        "the container's tmpfs (docker, swarm: gone with the container).",
        pattern=r"^[0-9]+(h|d|w)$",
    )

    # --- locust ------------------------------------------------------------------------------------
    locust_client_timeout: float = knob(
        60.0,
        "s",
        "locust",
        "How long a load-test client waits for a response (FastHttpUser network and connection timeout). "
        "Above NGINX_PROXY_READ_TIMEOUT, so the client sees nginx's or the app's answer, not its own abort.",
        gt=0,
    )
    locust_web_port: int = knob(
        8089,
        "port",
        "locust",
        "Port of the Locust web UI (`make loadtest-ui`), bound to 127.0.0.1.",
        ge=1,
        le=65535,
    )
    locust_workers: int = knob(
        0,
        "processes",
        "locust",
        "Locust worker processes beside the master for `make loadtest`, `make loadtest-ui` and each run of "
        "`make sweep`; 0 = one process does everything. One Locust process uses one CPU: add workers when "
        "a run is flagged for Locust CPU above 90 %.",
        ge=0,
        le=64,
    )
    locust_max_fail_ratio: float = knob(
        0.01,
        "ratio",
        "locust",
        "Threshold: a headless run whose failed/total requests exceed this exits non-zero (1 = off).",
        ge=0,
        le=1,
    )
    locust_max_p95: float = knob(
        5000.0,
        "ms",
        "locust",
        "Threshold: a headless run whose overall 95th percentile response time exceeds this exits "
        "non-zero (0 = off).",
        ge=0,
    )
    locust_ws_hold: float = knob(
        30.0,
        "s",
        "locust",
        "How long a WebSocket user keeps one connection open before it closes it and connects again.",
        gt=0,
    )
    locust_slow_delay: float = knob(
        1.0,
        "s",
        "locust",
        "`delay` the slow and sync scenarios ask for (/api/slow, /api/sync); at most APP_MAX_DELAY.",
        ge=0,
    )
    locust_blocking_delay: float = knob(
        0.2,
        "s",
        "locust",
        "`delay` the blocking scenario asks /api/blocking for: how long each call stalls its worker. "
        "Near GUNICORN_TIMEOUT gunicorn kills the worker.",
        ge=0,
    )

    @field_validator("app_gc_threshold")
    @classmethod
    def _gc_threshold(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",")]
        if len(parts) != 3 or not all(part.isdigit() for part in parts) or int(parts[0]) == 0:
            raise ValueError(f"expected three whole numbers gen0,gen1,gen2 with gen0 > 0, got {value!r}")
        return ",".join(parts)

    @cached_property
    def gc_thresholds(self) -> tuple[int, int, int]:
        gen0, gen1, gen2 = (int(part) for part in self.app_gc_threshold.split(","))
        return gen0, gen1, gen2

    @field_validator("app_module")
    @classmethod
    def _app_module(cls, value: str) -> str:
        if not APP_MODULE_SPEC.match(value):
            raise ValueError(
                f"expected module:attribute or module:factory() (dotted Python names), got {value!r}"
            )
        return value

    @field_validator("app_src", "app_requirements")
    @classmethod
    def _one_path(cls, value: str) -> str:
        if value != value.strip() or any(char in value for char in "\n\r\0"):
            raise ValueError(f"expected one path without surrounding blanks or line breaks, got {value!r}")
        return value

    @field_validator("nginx_websocket_paths")
    @classmethod
    def _websocket_paths(cls, value: str, info: ValidationInfo) -> str:
        names = ("app_liveness_path", "app_readiness_path", "app_metrics_path")  # validated before this one
        platform = {env_name(name): info.data[name] for name in names if name in info.data}
        said = websocket_paths.problem(value, platform)
        if said:
            raise ValueError(said)
        return " ".join(websocket_paths.entries(value))

    @field_validator("gunicorn_bind", "nginx_upstream")
    @classmethod
    def _address(cls, value: str) -> str:
        path = unix_socket_path(value)
        if path is not None:
            if not path.startswith("/"):
                raise ValueError(f"a unix socket path must be absolute (unix:/dir/app.sock), got {path!r}")
            if path.endswith("/"):
                raise ValueError(f"a unix socket path must name a file, not a directory, got {path!r}")
            size = len(os.fsencode(path))
            if size > SUN_PATH_MAX:
                raise ValueError(
                    f"a unix socket path may have at most {SUN_PATH_MAX} bytes (the kernel's sun_path), "
                    f"{path!r} has {size}"
                )
        elif value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
            raise ValueError(f"expected host:port or unix:/absolute/path, got {value!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        stack_env_file = os.environ.get("STACK_ENV_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        if stack_env_file:
            sources.append(DotEnvSettingsSource(settings_cls, env_file=stack_env_file))
        sources.append(env_settings)
        return tuple(sources)

    @cached_property
    def workers(self) -> int:
        return self.web_concurrency or usable_cpus()

    @cached_property
    def upstream(self) -> str:
        """Where nginx connects: a unix socket is on this host, so no other upstream address applies."""
        if unix_socket_path(self.gunicorn_bind) is not None:
            return self.gunicorn_bind
        return self.nginx_upstream or self.gunicorn_bind

    @cached_property
    def redis_address(self) -> str:
        """Where the app finds Redis: REDIS_URL, else the local runtime's redis-server (compose and swarm set
        REDIS_URL to their `redis` service)."""
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @cached_property
    def listen_port(self) -> int:
        return self.nginx_listen_port or self.http_port

    @cached_property
    def https_listen_port(self) -> int:
        return self.nginx_https_listen_port or self.https_port


class ToolInputs(BaseModel):
    """The inputs of the make targets that drive stacks rather than configure one: `make loadtest` /
    `loadtest-ui`, `drill`, `bench`, `sweep` and `timeout-lab`. Each tool's command line reads them from its
    environment, where make puts its command-line variables: an option on the command line wins, then the
    variable, then the default (deploy/stackctl/envargs.py binds them). They are not stack knobs: no stack
    reads them, `make check` does not list them and a sweep cannot vary them."""

    model_config = ConfigDict(frozen=True)

    # --- make loadtest, loadtest-ui (and make sweep) -----------------------------------------------
    scenario: str = tool_input(
        "mixed",
        "-",
        "loadtest",
        "Locust scenario: a name of `loadtest/scenarios/<name>_users.py` (mixed = every user class) or a "
        "locustfile's path.",
        also={"sweep": "http"},
    )
    users: int = tool_input(
        20, "users", "loadtest", "Peak concurrent Locust users.", also={"sweep": 20}, ge=1
    )
    spawn_rate: float = tool_input(
        5.0,
        "users/s",
        "loadtest",
        "Users started per second; 0 = all at once (a sweep's default; `make loadtest` needs > 0).",
        also={"sweep": 0.0},
        ge=0,
    )
    run_time: str = tool_input(
        "30s",
        "duration",
        "loadtest",
        "How long the load runs, in Locust's syntax (30s, 5m, 1h30m); a sweep's is per combination.",
        also={"sweep": "15s"},
    )
    host: str = tool_input(
        "",
        "URL",
        "loadtest",
        "Target of the load; empty = the running stack's URL (its https one with NGINX_TLS=1).",
    )
    shape: str = tool_input(
        "",
        "-",
        "loadtest",
        "Load shape: step, spike or soak (loadtest/shapes/); empty = USERS for RUN_TIME.",
    )

    # --- make drill --------------------------------------------------------------------------------
    drill: str = tool_input(
        "",
        "names",
        "drill",
        "Drills to run: one name, several (a,b), or empty / all = every drill (the docker ones need an "
        "engine). `python -m loadtest.drill --help` lists them.",
    )
    drill_seconds: float = tool_input(
        15.0,
        "s",
        "drill",
        "Load per drill, with the event in its first half; DRILL_SHORT=1 lowers the default.",
        ge=2,
    )
    server: str = tool_input(
        "blueprint",
        "names",
        "drill",
        "What runs the app behind the same nginx: blueprint (gunicorn + our worker), uvicorn-worker (the "
        "stock worker), gunicorn-asgi, uvicorn (--workers), granian; several (a,b) or all. Each event goes "
        "through the server's own mechanism (deploy/stackctl/servers.py); a row says `no such event` where "
        "it has none. uvicorn and granian run on the local runtime only.",
    )
    wrk_threads: int = tool_input(1, "threads", "drill", "wrk threads of a drill's load.", ge=1)
    wrk_connections: int = tool_input(
        32,
        "connections",
        "drill",
        "wrk connections of a drill's load (POST DRILL_POST + GET DRILL_GET through nginx), each with one "
        "request in flight at a time; at least WRK_THREADS.",
        ge=1,
    )
    drill_websockets: int = tool_input(
        20,
        "connections",
        "drill",
        "WebSocket clients on DRILL_WS during each drill, reconnecting when closed; DRILL_SHORT=1 lowers "
        "the default.",
        ge=0,
    )
    drill_room_members: int = tool_input(
        12,
        "members",
        "drill",
        "Members of 2 rooms during each drill (service/rooms/), resuming with `after` when closed, with a "
        "publisher per room; a member that misses a message fails the drill. 0 = none; DRILL_SHORT=1 "
        "lowers the default.",
        ge=0,
    )
    drill_room_rate: float = tool_input(
        20.0, "messages/s", "drill", "Messages each drill room's publisher POSTs per second.", gt=0
    )
    drill_post: str = tool_input(
        "/api/echo",
        "path",
        "drill",
        "What wrk POSTs DRILL_BODY to (Content-Type: application/json); an answer outside 2xx is a loss. "
        "Your app's (APP_MODULE): e.g. /message.",
    )
    drill_body: str = tool_input(
        '{"text":"drill"}', "JSON", "drill", "The JSON body of every POST to DRILL_POST."
    )
    drill_get: str = tool_input(
        "/api/ping",
        "path",
        "drill",
        "What wrk GETs, in turn with the POSTs on every connection; empty = POSTs only.",
    )
    drill_ws: str = tool_input(
        "/ws/echo",
        "path",
        "drill",
        "The WebSocket the drill's DRILL_WEBSOCKETS clients hold; it must echo text: each client sends a "
        "message every 0.5 s and expects it back. Empty = no WebSockets.",
    )
    drill_rate: float = tool_input(
        0.0,
        "requests/s",
        "drill",
        "Cap on a drill's wrk load over all its connections; 0 = as fast as wrk goes.",
        ge=0,
    )
    drill_short: int = tool_input(
        0,
        "0/1",
        "drill",
        "1 = seconds-long drills with short graceful timeouts (what the tests run).",
        ge=0,
        le=1,
    )
    drill_strict: int = tool_input(
        0,
        "0/1",
        "drill",
        "1 = every drill may lose nothing, the lossy ones (a killed worker) too: exit 3 if one lost any.",
        ge=0,
        le=1,
    )
    drill_node_down: str = tool_input(
        "",
        "command",
        "drill",
        "node-loss: a shell command that takes swarm node {node} (its hostname) down, e.g. `ssh {node} sudo "
        "systemctl stop docker`; `deploy/multinode/nodes.sh env` prints its own. Empty = node-loss is "
        "skipped.",
    )
    drill_node_up: str = tool_input(
        "",
        "command",
        "drill",
        "node-loss: the command that brings node {node} back after the load (its tasks do not come back: "
        "swarm never rebalances).",
    )

    # --- make bench --------------------------------------------------------------------------------
    bench: str = tool_input(
        "",
        "names",
        "bench",
        "Rows to run: one name, several (a,b), or empty / all = every row. `python -m loadtest.bench "
        "--help` lists them. Every row runs WEB_CONCURRENCY workers (default: the blueprint's) of PROFILE.",
    )
    bench_seconds: float = tool_input(
        10.0, "s", "bench", "wrk time per row, after a warm-up; BENCH_SHORT=1 lowers the default.", ge=1
    )
    bench_connections: int = tool_input(
        64, "connections", "bench", "wrk connections of the throughput rows (one wrk thread).", ge=1
    )
    bench_path: str = tool_input(
        "/api/ping",
        "path",
        "bench",
        "What the throughput rows GET from the app (the bare row always GETs hello.py's /api/ping). Your "
        "app's (APP_MODULE): a cheap GET route, e.g. /.",
    )
    bench_slow_n: int = tool_input(
        1000,
        "requests",
        "bench",
        "/api/slow requests the slow-held row holds at once through nginx (a demo route: the row is skipped "
        "when APP_MODULE is another app).",
        ge=1,
    )
    bench_slow_delay: float = tool_input(
        5.0, "s", "bench", "The `delay` of those requests; at most APP_MAX_DELAY.", ge=0
    )
    bench_ws_n: int = tool_input(
        1000,
        "connections",
        "bench",
        "WebSockets the ws-held row holds on /ws/echo through nginx (a demo route: the row is skipped when "
        "APP_MODULE is another app).",
        ge=1,
    )
    bench_ws_hold: float = tool_input(
        0.0, "s", "bench", "How long the ws-held row holds them; 0 = BENCH_SECONDS.", ge=0
    )
    bench_rooms_n: int = tool_input(
        2000,
        "members",
        "bench",
        "Members of one room the rooms-fanout row holds through nginx (the kernel spreads them over the "
        "workers); every message reaches each of them.",
        ge=1,
    )
    bench_rooms_rate: float = tool_input(
        5.0,
        "messages/s",
        "bench",
        "The rooms-fanout row's first rate of POSTs to that room, doubled each step while the p99 "
        "publish-to-receive stays within 250 ms.",
        gt=0,
    )
    bench_short: int = tool_input(
        0, "0/1", "bench", "1 = short rows and small counts (what the tests run).", ge=0, le=1
    )

    # --- make sweep (also SCENARIO, USERS, SPAWN_RATE, RUN_TIME, LOCUST_WORKERS) ------------------
    sweep: str = tool_input(
        "",
        "KNOB=v,...",
        "sweep",
        "What to sweep, e.g. 'WEB_CONCURRENCY=1,2,4 APP_THREADPOOL_TOKENS=40,200' (stack knobs): every "
        "combination of the values gets `make check`, a fresh stack and SCENARIO for RUN_TIME.",
    )
    sweep_max_p95_ms: float = tool_input(
        0.0,
        "ms",
        "sweep",
        "The recommendation considers combinations whose p95 is at most this; 0 = twice the best p95 the "
        "sweep measured.",
        ge=0,
    )
    sweep_max_fail_ratio: float = tool_input(
        0.01,
        "ratio",
        "sweep",
        "The recommendation considers combinations whose failed/total requests are at most this.",
        ge=0,
        le=1,
    )

    # --- make timeout-lab --------------------------------------------------------------------------
    lab_format: Literal["table", "markdown", "json"] = tool_input(
        "table", "-", "timeout-lab", "How the lab prints its rows."
    )


def tool_default(field: str, tool: Tool) -> Any:
    """The default of a ToolInputs field for `tool` (a sweep's SCENARIO is http, `make loadtest`'s mixed)."""
    info = ToolInputs.model_fields[field]
    defaults = info.json_schema_extra.get("defaults") if isinstance(info.json_schema_extra, dict) else None
    return defaults[tool] if isinstance(defaults, dict) and tool in defaults else info.default


# The layers whose knobs reach the app process (gunicorn, its workers, the app) and /api/info shows. The
# others are read by stackctl, nginx, compose or Locust: under Docker the app container does not even
# receive them; the redis layer does (REDIS_URL, REDIS_TIMEOUT) but stays out of /api/info: its URL may
# hold a password.
APP_PROCESS_LAYERS: tuple[Layer, ...] = ("app", "rooms", "gunicorn", "uvicorn")


def fields_of(*layers: Layer) -> tuple[str, ...]:
    """The Settings fields whose layer is one of `layers`, in declaration order."""
    return tuple(
        name
        for name, field in Settings.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("layer") in layers
    )


def env_name(field: str) -> str:
    return field.upper()


class ConfigError(Exception):
    """A knob has a value its rule refuses; the message names the variable, the value and the rule."""


def load_settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = env_name(str(error["loc"][0])) if error["loc"] else "settings"
            lines.append(f"{name}={error.get('input')!r}: {error['msg']}")
        raise ConfigError("; ".join(lines)) from None
