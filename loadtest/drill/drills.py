"""The drills: each one event in a worker's (or container's) life, provoked under load on a fresh stack,
and what that event is allowed to lose. `DRILLS` is the catalogue, in the order `make drill` runs it.

A drill of the app server's events (`event`) goes through the mechanism of whichever server runs the app
(deploy/stackctl/servers.py: gunicorn's HUP, uvicorn's --limit-max-requests, granian's respawn, ...); one
whose server has no such mechanism is not run, its row says so."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import redis

from deploy.stackctl import procs, stack
from deploy.stackctl.components import REDIS
from deploy.stackctl.servers import AppServer, Event, Mechanism
from loadtest.drill import containers, nodes
from loadtest.drill.capabilities import Capability, Site, engine, node_control, swarm_of
from loadtest.drill.load import Load
from loadtest.drill.observe import (
    RESPAWN_WITHIN_S,
    WorkerWatch,
    bind_port,
    exits,
    new_worker_answers,
    nginx_access,
    status_of,
    upstream_connections,
)
from loadtest.drill.plan import DrillError, LoadParams
from loadtest.rooms import Ledger, message_key

SLOW_IN_FLIGHT = 8  # down-in-flight: /api/slow requests in flight when the stop begins
REDIS_IN_FLIGHT_MS = 1000  # redis-restart: messages accepted this shortly before the stop may be lost


@dataclass
class Context:
    """A drill's stack and load. An action that replaces the stack's handle (reload, recreate) stores
    the new one here."""

    handle: stack.Handle
    load: Load
    params: LoadParams
    run_dir: Path
    knobs: dict[str, str]  # what the stack was started with, ports included
    base: Mapping[str, str] | None
    server: AppServer
    watch: WorkerWatch | None = None
    site: Site = field(default_factory=Site)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # after the load, before the stack goes


@dataclass
class Outcome:
    recovery_s: float | None = None
    recovery: str = ""  # what recovery_s measures
    allowed: int = 0
    allowance: str = "nothing"
    probes: dict[str, int] = field(default_factory=dict)  # the drill's own requests by outcome
    probe_failures: int = 0
    not_counted: tuple[str, ...] = ()  # failure kinds the event causes by design (listed, not counted)
    notes: list[str] = field(default_factory=list)
    load_until: float | None = None  # monotonic time the stack stopped serving: no tail, rate until then
    rooms_allowed: int = 0  # messages the room members may miss
    rooms_allowance: str = "nothing"
    timeline: dict[str, float] = field(default_factory=dict)  # seconds after the event, by what happened


Action = Callable[[Context], Outcome]


Needs = Callable[[stack.Backend], bool]


def host_processes(runtime: stack.Backend) -> bool:
    """The workers are processes of this host: their pids to signal and watch, their log files."""
    return runtime.processes_here


def compose_project(runtime: stack.Backend) -> bool:
    """The app runs in containers of a compose project: to scale, recreate and kill."""
    return runtime.compose_project


def swarm_services(runtime: stack.Backend) -> bool:
    """The app runs as swarm tasks, rescheduled by the manager when their node is lost."""
    return runtime.swarm_services


@dataclass(frozen=True)
class Drill:
    name: str
    needs: Needs  # what the drill's event needs of the runtime its stack runs on
    what: str
    act: Action
    knobs: Callable[[LoadParams], dict[str, str]] = lambda params: {}
    prepare: Callable[[Context], None] | None = None  # before the load starts
    demo_route: str = ""  # a route of the demo's the drill sends itself: skipped for another APP_MODULE
    site_needs: tuple[Capability, ...] = ()  # what it must find where it runs (a swarm of N nodes, ...)
    event: Event | None = None  # the app server's event it provokes, through that server's mechanism
    how: str = ""  # its mechanism when it is not the app server's (nginx's, compose's, the swarm's)

    @property
    def runtime(self) -> stack.Runtime:
        """Where the drill runs: the first runtime (in runtimes.RUNTIMES' order) that has what it needs."""
        found = next((name for name in stack.RUNTIMES if self.needs(stack.backend(name))), None)
        if found is None:
            raise DrillError(f"drill {self.name}: no runtime has what it needs ({self.needs.__name__})")
        return found

    def mechanism(self, server: AppServer) -> Mechanism:
        return server.mechanism(self.event) if self.event else Mechanism(self.how)


def in_flight_bound(ctx: Context, held: int, whose: str) -> tuple[int, str]:
    """Requests in flight on a worker: at most one per upstream connection it holds (nginx's pooled and
    busy connections and WebSocket tunnels, counted with psutil), and at most one per wrk connection."""
    bound = min(held, ctx.params.connections)
    return bound, f"<= {bound}: in flight on {whose} ({held} upstream conns, wrk {ctx.params.connections})"


# --- local drills -----------------------------------------------------------------------------------


def baseline(ctx: Context) -> Outcome:
    return Outcome(notes=["no event: what the load alone loses (the other rows are measured against it)"])


def reload(ctx: Context) -> Outcome:
    started = time.monotonic()
    with stack.quietly(True):
        ctx.handle = ctx.handle.reload()
    return Outcome(
        time.monotonic() - started, "HUP until every old worker exited and /healthz answered through nginx"
    )


def recycle_knobs(params: LoadParams) -> dict[str, str]:
    """About 300 requests per drill second per worker: a worker recycles every few seconds at ~2,000 req/s."""
    most = max(300, round(params.seconds * 300))
    return {"GUNICORN_MAX_REQUESTS": str(most), "GUNICORN_MAX_REQUESTS_JITTER": str(most // 4)}


def recycle(ctx: Context) -> Outcome:
    time.sleep(ctx.params.seconds * 0.4)  # recycling happens all along; the row counts the new workers
    return Outcome()


def signal_worker(ctx: Context, sig: signal.Signals, lossy: bool) -> Outcome:
    old = set(ctx.handle.worker_pids())
    if not old:
        raise DrillError(f"the stack has no {ctx.server.process} workers to signal")
    # The worker holding most of nginx's upstream connections: uvicorn's workers accept unevenly, and an
    # idle one would lose nothing whatever the server does.
    port = bind_port(ctx.handle)
    held, victim = max((upstream_connections(pid, port), pid) for pid in old)
    started = time.monotonic()
    os.kill(victim, sig)
    respawn = new_worker_answers(ctx.handle, old, started)
    outcome = Outcome(respawn, f"{sig.name} to worker {victim} until a new worker pid answered")
    if respawn is None:
        outcome.notes.append(f"no new worker answered within {RESPAWN_WITHIN_S:g} s")
    if lossy:
        outcome.allowed, outcome.allowance = in_flight_bound(ctx, held, f"worker {victim}")
    return outcome


def worker_term(ctx: Context) -> Outcome:
    return signal_worker(ctx, signal.SIGTERM, lossy=False)


def worker_kill(ctx: Context) -> Outcome:
    return signal_worker(ctx, signal.SIGKILL, lossy=True)


def timeout_knobs(params: LoadParams) -> dict[str, str]:
    # APP_STARTUP_TIMEOUT must stay below GUNICORN_TIMEOUT (rule 5, app startup) or `up` refuses the stack.
    return {"GUNICORN_TIMEOUT": "2" if params.short else "3", "APP_STARTUP_TIMEOUT": "1.5"}


def worker_timeout(ctx: Context) -> Outcome:
    watch = ctx.watch
    if watch is None:
        raise DrillError("worker-timeout needs the local runtime's worker watch")
    timeout = ctx.handle.settings.gunicorn_timeout
    delay = timeout + 3
    old = set(ctx.handle.worker_pids())
    request_id = f"drill-blocking-{secrets.token_hex(4)}"
    url = f"{ctx.handle.url}/api/blocking?delay={delay}"
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        blocking = pool.submit(status_of, url, delay * len(old) + 30, request_id)
        went = watch.first_gone(old, within=delay + 10)
        if went is None:
            raise DrillError(f"no worker timed out within {delay + 10} s of /api/blocking?delay={delay}")
        victim, died = went
        respawn = new_worker_answers(ctx.handle, old, died)
        answer = blocking.result()
    time.sleep(0.3)  # the watch's next samples
    killed = watch.gone_among(old)
    held = sum(watch.peak_connections(pid, started) for pid in killed)
    by = ctx.server.process
    outcome = Outcome(respawn, f"worker {victim} killed by {by} until a new worker pid answered")
    outcome.allowed, outcome.allowance = in_flight_bound(ctx, held, f"the killed worker(s) {killed}")
    outcome.probes = {f"/api/blocking {answer}": 1}
    outcome.notes.append(
        f"/api/blocking?delay={delay} (the drill's own, not counted) blocked worker {victim}; {by} "
        f"killed it {died - started:.1f} s later (GUNICORN_TIMEOUT={timeout})"
    )
    tries = nginx_access(ctx.handle, request_id).get("upstream_status", "?")
    if len(killed) != 1:
        # nginx must not send a request whose worker died serving it to another worker
        # (proxy_next_upstream_timeout in the template): the poison request kills one worker, not all.
        raise DrillError(
            f"one blocking GET killed {len(killed)} workers {killed} (nginx upstream_status {tries}); "
            "exactly one may die"
        )
    outcome.notes.append(f"nginx tried it once (upstream_status {tries}) and answered {answer}")
    return outcome


def nginx_reload(ctx: Context) -> Outcome:
    master = ctx.handle.pids()["nginx"]
    old = set(procs.descendants(master))
    started = time.monotonic()
    os.kill(master, signal.SIGHUP)
    deadline = started + 30
    while time.monotonic() < deadline and len(set(procs.descendants(master)) - old) < len(old):
        time.sleep(0.02)
    recovery = time.monotonic() - started
    time.sleep(1.0)
    lingering = old & set(procs.descendants(master))
    notes = [
        f"{len(lingering)} old nginx worker(s) still running 1 s later: they keep open WebSocket tunnels"
    ]
    connections = ctx.params.connections
    return Outcome(
        recovery,
        "HUP to the nginx master until as many new workers ran",
        # nginx's old workers close idle client keep-alive connections at once (ngx_close_idle_connections);
        # a request a client sends on one at that instant gets no answer. nginx has no way around it, and
        # make reload no longer reloads nginx unless its config changed.
        allowed=connections,
        allowance=f"<= {connections} (one per wrk connection): requests sent on an idle client keep-alive "
        "connection just as the old nginx worker closed it",
        notes=notes if lingering else [],
    )


def down_in_flight(ctx: Context) -> Outcome:
    delay = 2 if ctx.params.short else 3
    url = f"{ctx.handle.url}/api/slow?delay={delay}"
    grace = ctx.handle.settings.gunicorn_graceful_timeout + 5  # what local.down gives each process
    sent = threading.Semaphore(0)
    with ThreadPoolExecutor(SLOW_IN_FLIGHT + 1) as pool:
        futures = [pool.submit(status_once_sent, url, delay + 60, sent) for _ in range(SLOW_IN_FLIGHT)]
        # The stop must find every slow request written to nginx: under load a fixed pause was sometimes
        # shorter than the probes' connects, and nginx (stopping) then refused them, a loss of the drill's.
        for _ in range(SLOW_IN_FLIGHT):
            if not sent.acquire(timeout=15):
                raise DrillError("down-in-flight: the slow requests were not all sent within 15 s")
        time.sleep(0.5)  # nginx reads them and passes them on to the app
        ctx.load.sockets.hold()
        ctx.load.stop_rooms()  # their count before the stack goes: after it, nothing can be delivered
        exited = pool.submit(exits, ctx.handle.pids(), 3 * grace)
        started = time.monotonic()
        with stack.quietly(True):
            ctx.handle.stop()
        stopped = time.monotonic() - started
        answers = Counter(f"/api/slow?delay={delay} {f.result()}" for f in futures)
        took = exited.result()
    failed = sum(n for probe, n in answers.items() if not probe.endswith(" 200"))
    notes = [
        ", ".join(f"{name} exited {seconds:.1f} s after the stop began" for name, seconds in took.items())
        + f" (local.down sends nginx QUIT, then {ctx.server.process} TERM; SIGKILL after {grace} s)"
    ]
    return Outcome(
        stopped,
        f"stop until nginx and {ctx.server.process} exited",
        allowance=f"nothing answered; {SLOW_IN_FLIGHT} slow in flight: all 200",
        probes=dict(answers),
        probe_failures=failed,
        not_counted=("connect", "read", "write"),
        notes=notes,
        load_until=started,
    )


def status_once_sent(url: str, timeout: float, sent: threading.Semaphore) -> str:
    """GET `url` on a connection of its own, releasing `sent` once the request is written; the status, or
    the error's name. Plain HTTP only (drill stacks run without TLS); other URLs go through httpx."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        sent.release()
        return status_of(url, timeout)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as conn:
            target = f"{parts.path}?{parts.query}" if parts.query else parts.path
            request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
            conn.sendall(request.encode())
            sent.release()
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    except OSError as error:
        sent.release()
        return type(error).__name__
    status_line = answer.split(b"\r\n", 1)[0].split()
    return status_line[1].decode() if len(status_line) >= 2 else "no status line"


def redis_restart(ctx: Context) -> Outcome:
    """The stack's redis-server stopped and started again (no persistence: it comes back empty). One room
    member is away across the restart to show what that loses; the members present must lose nothing."""
    rooms = ctx.load.rooms
    if rooms is None:
        raise DrillError("redis-restart needs room members: DRILL_ROOM_MEMBERS > 0")
    away = rooms.every_member()[0]
    publisher = rooms.publishers[away.room]
    away.away()
    time.sleep(0.5)  # messages it is away for
    started = time.monotonic()
    ctx.handle.stop_service("redis")
    stopped_ms = int(time.time() * 1000)  # ids are the Redis clock's (this host's): older = the old Redis
    held_before = len([i for i in publisher.accepted if message_key(i)[0] < stopped_ms])
    time.sleep(1.0)
    ctx.handle.start_service("redis")
    published = len(publisher.accepted)
    resumed = wait_for(lambda: len(publisher.accepted) > published, 30)
    recovery = time.monotonic() - started
    kept = older_than(ctx, rooms, stopped_ms)
    last = away.last_id
    lost = [
        i
        for i in list(publisher.accepted)
        if message_key(i)[0] < stopped_ms and (last is None or message_key(i) > message_key(last))
    ]
    # What a dying Redis had accepted but not yet handed to every worker's reader is gone with it.
    last_moments = {
        room: sum(
            1 for i in list(p.accepted) if stopped_ms - REDIS_IN_FLIGHT_MS <= message_key(i)[0] < stopped_ms
        )
        for room, p in rooms.publishers.items()
    }
    in_flight = sum(last_moments[m.room] for m in rooms.every_member() if m is not away)
    away.back()
    outcome = Outcome(
        recovery if resumed else None, "redis-server stopped until a publish was accepted again"
    )
    outcome.notes.append(
        f"{away.room}: {held_before} message(s) accepted before the restart, {kept} of all the drill "
        "rooms' still held after it (redis-server runs without persistence)"
    )
    if kept:
        outcome.notes.append("Redis kept its history across the restart: nothing may be missed")
        return outcome
    outcome.rooms_allowed = len(lost) + in_flight
    outcome.rooms_allowance = (
        f"{len(lost)} + <= {in_flight}: what {away.name}, away across the restart, had not received (Redis "
        "came back empty: its resume found none of them), and for the members present the messages Redis "
        f"accepted in its last {REDIS_IN_FLIGHT_MS} ms, which it may not have handed to their worker before "
        "it died"
    )
    return outcome


def older_than(ctx: Context, rooms: Ledger, ms: int) -> int:
    """Messages Redis holds for the drill's rooms with ids older than `ms`; -1 when it does not answer."""
    client = redis.Redis.from_url(ctx.handle.settings.redis_address, socket_timeout=2)
    try:
        return sum(len(client.xrange(f"room:{room}", "-", f"({ms}-0") or []) for room in rooms.publishers)
    except redis.RedisError:
        return -1
    finally:
        client.close()


def wait_for(condition: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- docker drills ----------------------------------------------------------------------------------


def recreate(ctx: Context) -> Outcome:
    before = {c.id for c in ctx.handle.containers("app")}
    changed = {"APP_MAX_TEXT_LENGTH": str(ctx.handle.settings.app_max_text_length + 1)}
    started = time.monotonic()
    with containers.quiet():
        ctx.handle = stack.start(ctx.handle.runtime, {**ctx.knobs, **changed}, ctx.run_dir, base=ctx.base)
    after = {c.id for c in ctx.handle.containers("app")}
    notes = [f"app container(s) {sorted(before)} -> {sorted(after)}"]
    if before == after:
        notes.append("compose did not recreate the app container")
    return Outcome(
        time.monotonic() - started,
        "make up with a changed app knob: new containers healthy and balanced over, old ones drained",
        notes=notes,
    )


def three_apps(ctx: Context) -> None:
    """Before the load: its WebSockets spread over all three, so the two that go close some of them."""
    containers.scale(ctx.handle, 3)


def scale_down(ctx: Context) -> Outcome:
    started = time.monotonic()
    containers.scale(ctx.handle, 1)
    return Outcome(
        time.monotonic() - started, "compose scale app=3 -> 1 until nginx balances over the one left"
    )


def two_apps(ctx: Context) -> None:
    containers.scale(ctx.handle, 2)


def app_killed(ctx: Context) -> Outcome:
    victim = ctx.handle.containers("app")[0]
    containers.kill(ctx.handle, victim)
    connections = ctx.params.connections
    # nginx retries a GET that fails on a dead upstream, never a POST it has sent; once one failed, nginx
    # skips the container for its fail_timeout, so each wrk connection (one request at a time) loses one.
    return Outcome(
        allowed=connections,
        allowance=f"<= {connections}: POSTs in flight on the killed container (one per wrk connection)",
        notes=[f"docker kill {victim.name}"],
    )


# --- swarm drills -----------------------------------------------------------------------------------

NODE_LOSS_NODES = 3  # an edge node, the manager, and a node to lose: each may carry app tasks
NODE_LOSS_WITHIN_S = 120.0  # for the swarm to mark the node down and reschedule its tasks


def node_loss_knobs(params: LoadParams) -> dict[str, str]:
    """An app task per node. nginx gives up connecting to a lost task after 1 s (a LAN answers in a
    millisecond; 5 s by default) and retries another, which a WebSocket handshake also survives; and the
    requests the lost node swallowed come back as nginx's 504 within the load (10 s < wrk's timeout) so they
    are counted. The app must answer before nginx gives up (rule 3)."""
    return {
        "SWARM_APP_REPLICAS": str(NODE_LOSS_NODES),
        "NGINX_PROXY_CONNECT_TIMEOUT": "1",
        "NGINX_PROXY_READ_TIMEOUT": "10",
        "APP_REQUEST_TIMEOUT": "5",
        "COMPOSE_PUBLISH_ADDRESS": "0.0.0.0",
    }


def spare_redis(ctx: Context) -> None:
    nodes.keep_redis_off(ctx.handle, nodes.choose_victim(ctx.handle).node)


def node_loss(ctx: Context) -> Outcome:
    """Take down a node that runs an app task (DRILL_NODE_DOWN), keep the load on while the swarm notices
    and reschedules, until the requests the node swallowed have come back as nginx's 504."""
    victim = nodes.choose_victim(ctx.handle)
    redis_on = nodes.placed(ctx.handle, REDIS.service)
    lost_at = datetime.now(UTC)
    started = time.monotonic()
    nodes.node_command(ctx.site.node_down, victim.node, "DRILL_NODE_DOWN")
    ctx.cleanups.append(lambda: nodes.node_command(ctx.site.node_up, victim.node, "DRILL_NODE_UP"))
    recovery = nodes.watch_recovery(ctx.handle, victim, started, within=NODE_LOSS_WITHIN_S)
    # A request written to a lost task before nginx noticed ends as a 504 after NGINX_PROXY_READ_TIMEOUT.
    settle = ctx.handle.settings.nginx_proxy_read_timeout + 3
    time.sleep(max(0.0, started + settle - time.monotonic()))
    last = nodes.last_sent(ctx.handle, victim.addresses, lost_at)
    connections = ctx.params.connections
    outcome = Outcome(
        recovery.rescheduled_s,
        f"{victim.node} lost until the app ran its {NODE_LOSS_NODES} tasks on the other nodes",
        allowed=connections,
        allowance=f"<= {connections}: requests in flight on {victim.node}'s app task(s) when it went "
        "(one per wrk connection: each waits for its answer)",
    )
    outcome.timeline = {
        name: round(value, 1)
        for name, value in (
            ("node marked down", recovery.down_s),
            ("app tasks rescheduled", recovery.rescheduled_s),
            ("nginx's last request to a lost task", last),
        )
        if value is not None
    }
    outcome.notes.append(
        f"{victim.node} ({len(victim.tasks)} app task(s), {', '.join(sorted(victim.addresses))}) taken down "
        f"with DRILL_NODE_DOWN; dispatcher heartbeat {nodes.heartbeat(ctx.handle)}; replacements on "
        f"{recovery.where or '?'}; redis on {redis_on} when it went"
    )
    if recovery.rescheduled_s is None:
        outcome.notes.append(f"the app's tasks were not rescheduled within {NODE_LOSS_WITHIN_S:g} s")
        outcome.probe_failures += 1
    return outcome


DRILLS: tuple[Drill, ...] = (
    Drill("baseline", host_processes, "nothing happens: the load alone", baseline, how="no event"),
    Drill("reload", host_processes, "handle.reload(): the app server's reload", reload, event="reload"),
    Drill(
        "recycle",
        host_processes,
        "workers recycle during the load (a small request limit, or the server's own trigger)",
        recycle,
        recycle_knobs,
        event="recycle",
    ),
    Drill("worker-term", host_processes, "SIGTERM to one worker", worker_term, event="worker-term"),
    Drill("worker-kill", host_processes, "SIGKILL to one worker", worker_kill, event="worker-kill"),
    Drill(
        "worker-timeout",
        host_processes,
        "/api/blocking past GUNICORN_TIMEOUT: the server kills the blocked worker",
        worker_timeout,
        timeout_knobs,
        demo_route="/api/blocking",
        event="worker-timeout",
    ),
    Drill(
        "nginx-reload",
        host_processes,
        "HUP to the nginx master",
        nginx_reload,
        how="HUP to the nginx master: new nginx workers, the old ones close idle client connections",
    ),
    Drill(
        "down-in-flight",
        host_processes,
        "stop the stack with slow requests in flight",
        down_in_flight,
        demo_route="/api/slow",
        event="stop",
    ),
    Drill(
        "redis-restart",
        host_processes,
        "the rooms' redis-server stopped and started again (no persistence) under load",
        redis_restart,
        demo_route="/ws/rooms/{room}",
        how="redis-server stopped and started again: the rooms' backplane, the app server untouched",
    ),
    Drill(
        "recreate",
        compose_project,
        "compose recreates the app container for a changed knob",
        recreate,
        how="make up with a changed knob: compose starts new app containers, nginx follows, old ones stop",
    ),
    Drill(
        "scale-down",
        compose_project,
        "compose scale app=3 -> 1 under load",
        scale_down,
        prepare=three_apps,
        how="compose scale: two app containers get SIGTERM (the gunicorn master's stop)",
    ),
    Drill(
        "app-killed",
        compose_project,
        "docker kill one of 2 app containers",
        app_killed,
        prepare=two_apps,
        how="docker kill: SIGKILL to one app container",
    ),
    Drill(
        "node-loss",
        swarm_services,
        "a swarm node with an app task goes down (DRILL_NODE_DOWN): rescheduled, nginx stops sending to it",
        node_loss,
        node_loss_knobs,
        prepare=spare_redis,
        site_needs=(engine, swarm_of(NODE_LOSS_NODES), node_control),  # engine: of DOCKER_HOST as given
        how="a node taken down (DRILL_NODE_DOWN): the swarm reschedules its app tasks",
    ),
)
NAMES = tuple(d.name for d in DRILLS)
BY_NAME = {d.name: d for d in DRILLS}
