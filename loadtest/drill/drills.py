"""The drills: each one event in a worker's (or container's) life, provoked under load on a fresh stack,
and what that event is allowed to lose. `DRILLS` is the catalogue, in the order `make drill` runs it.

A drill of the app server's events (`event`) goes through the mechanism of whichever server runs the app
(deploy/stackctl/servers.py: gunicorn's HUP, uvicorn's --limit-max-requests, granian's respawn, ...); one
whose server has no such mechanism is not run, its row says so."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from deploy.stackctl import procs, stack
from deploy.stackctl.servers import AppServer, Event, Mechanism
from loadtest.drill import containers
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

SLOW_IN_FLIGHT = 8  # down-in-flight: /api/slow requests in flight when the stop begins


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


Action = Callable[[Context], Outcome]


@dataclass(frozen=True)
class Drill:
    name: str
    runtime: stack.Runtime
    what: str
    act: Action
    knobs: Callable[[LoadParams], dict[str, str]] = lambda params: {}
    prepare: Callable[[Context], None] | None = None  # before the load starts
    event: Event | None = None  # the app server's event it provokes, through that server's mechanism
    how: str = ""  # its mechanism when it is not the app server's (nginx's, compose's)

    def mechanism(self, server: AppServer) -> Mechanism:
        return server.mechanism(self.event) if self.event else Mechanism(self.how)


def in_flight_bound(ctx: Context, held: int, whose: str, kills: int = 1) -> tuple[int, str]:
    """Requests in flight on a worker: at most one per upstream connection it holds (nginx's pooled and
    busy connections and WebSocket tunnels, counted with psutil), and at most one per wrk connection
    (for each of `kills` workers killed one after another)."""
    bound = min(held, ctx.params.connections * kills)
    wrk = f"wrk {ctx.params.connections}" + (f" x {kills} kills" if kills > 1 else "")
    return bound, f"<= {bound}: in flight on {whose} ({held} upstream conns, {wrk})"


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
    victim = min(old)
    held = upstream_connections(victim, bind_port(ctx.handle))
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
    return {"GUNICORN_TIMEOUT": "2" if params.short else "3"}


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
    tries = nginx_access(ctx.handle, request_id).get("upstream_status", "?")
    # nginx retries the blocking GET on the next worker (a "poison request"): each try kills one, the
    # replacements too, and each kill takes at most one request per wrk connection with it.
    kills = max(len(killed), tries.count("502"))
    whose = f"the killed worker(s) {killed}"
    outcome.allowed, outcome.allowance = in_flight_bound(ctx, held, whose, max(1, len(killed)))
    extra = kills - len(killed)
    if extra:
        more = ctx.params.connections * extra
        outcome.allowed += more
        what = outcome.allowance.split(": ", 1)[1]
        outcome.allowance = (
            f"<= {outcome.allowed}: {what}, and <= {more} on the {extra} worker(s) nginx's retries killed "
            "after them (one per wrk connection each)"
        )
    outcome.probes = {f"/api/blocking {answer}": 1}
    outcome.notes.append(
        f"/api/blocking?delay={delay} (the drill's own, not counted) blocked worker {victim}; "
        f"{ctx.server.process} killed it {died - started:.1f} s later (GUNICORN_TIMEOUT={timeout})"
    )
    if kills > 1:
        outcome.notes.append(
            f"nginx sent it again (upstream_status {tries}): it retries a GET that fails on a pooled "
            f"upstream connection, so one blocking GET timed out {kills} workers in turn"
        )
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
    with ThreadPoolExecutor(SLOW_IN_FLIGHT + 1) as pool:
        futures = [pool.submit(status_of, url, delay + 60) for _ in range(SLOW_IN_FLIGHT)]
        time.sleep(0.5)
        ctx.load.sockets.hold()
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


# --- docker drills ----------------------------------------------------------------------------------


def recreate(ctx: Context) -> Outcome:
    before = {c.id for c in ctx.handle.containers("app")}
    changed = {"APP_MAX_TEXT_LENGTH": str(ctx.handle.settings.app_max_text_length + 1)}
    started = time.monotonic()
    with containers.quiet():
        ctx.handle = stack.start("docker", {**ctx.knobs, **changed}, ctx.run_dir, base=ctx.base)
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


DRILLS: tuple[Drill, ...] = (
    Drill("baseline", "local", "nothing happens: the load alone", baseline, how="no event"),
    Drill("reload", "local", "handle.reload(): the app server's reload", reload, event="reload"),
    Drill(
        "recycle",
        "local",
        "workers recycle during the load (a small request limit, or the server's own trigger)",
        recycle,
        recycle_knobs,
        event="recycle",
    ),
    Drill("worker-term", "local", "SIGTERM to one worker", worker_term, event="worker-term"),
    Drill("worker-kill", "local", "SIGKILL to one worker", worker_kill, event="worker-kill"),
    Drill(
        "worker-timeout",
        "local",
        "/api/blocking past GUNICORN_TIMEOUT: the server kills the blocked worker",
        worker_timeout,
        timeout_knobs,
        event="worker-timeout",
    ),
    Drill(
        "nginx-reload",
        "local",
        "HUP to the nginx master",
        nginx_reload,
        how="HUP to the nginx master: new nginx workers, the old ones close idle client connections",
    ),
    Drill(
        "down-in-flight",
        "local",
        "stop the stack with slow requests in flight",
        down_in_flight,
        event="stop",
    ),
    Drill(
        "recreate",
        "docker",
        "compose recreates the app container for a changed knob",
        recreate,
        how="make up with a changed knob: compose starts new app containers, nginx follows, old ones stop",
    ),
    Drill(
        "scale-down",
        "docker",
        "compose scale app=3 -> 1 under load",
        scale_down,
        prepare=three_apps,
        how="compose scale: two app containers get SIGTERM (the gunicorn master's stop)",
    ),
    Drill(
        "app-killed",
        "docker",
        "docker kill one of 2 app containers",
        app_killed,
        prepare=two_apps,
        how="docker kill: SIGKILL to one app container",
    ),
)
NAMES = tuple(d.name for d in DRILLS)
BY_NAME = {d.name: d for d in DRILLS}
