"""How a drill runs: a fresh stack on free ports (deploy/stackctl/stack.py), its app run by the chosen
server (deploy/stackctl/servers.py), with its run dir under the report dir (<server>/<drill>), sampled
beside the load (loadtest/sampler: the drill's timeline); the load started; the event after 40 % of
DRILL_SECONDS; the load kept up until DRILL_SECONDS have passed (at least 20 % of them after the event);
then the row: what was sent, what failed by kind, WebSocket closes and failed reconnects, recovery, and the
verdict against the drill's allowance."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.stackctl import servers, stack
from deploy.stackctl.errors import StackError
from deploy.stackctl.servers import AppServer
from loadtest.apps import needs_demo, served_app
from loadtest.drill import containers
from loadtest.drill.capabilities import Site
from loadtest.drill.drills import BY_NAME, Context, Drill, Outcome
from loadtest.drill.load import Load, Tally
from loadtest.drill.observe import WorkerWatch
from loadtest.drill.plan import LoadParams, NodeCommands, Row
from loadtest.drill.report import machine, write_report
from loadtest.host import find_wrk, load_average
from loadtest.sampler.sampler import SERIES_FILE, beside
from loadtest.status import Status

LEAD = 0.4  # of DRILL_SECONDS under load before the event
TIMELINE = "timeline.json"  # beside SERIES_FILE: when the event happened, when each WebSocket closed
TAIL = 0.2  # of DRILL_SECONDS under load at least after it
# Applied unless the environment sets them: a worker to spare for the one a drill takes down.
DEFAULTS = {"WEB_CONCURRENCY": "2"}
# Always: one event per drill. Defaults recycle a worker every 10,000 requests (every few seconds at the
# drills' rates), which would mix recycling into every row; only `recycle` turns it on.
ISOLATED = {"GUNICORN_MAX_REQUESTS": "0", "GUNICORN_MAX_REQUESTS_JITTER": "0"}
# Short mode: graceful timeouts of seconds, so a reload or a stop with WebSockets open ends quickly.
SHORT_KNOBS = {"UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": "3", "GUNICORN_GRACEFUL_TIMEOUT": "5"}


def drill_knobs(
    drill: Drill, params: LoadParams, environ: Mapping[str, str], server: AppServer
) -> dict[str, str]:
    """What the drill sets on its stack (ports aside), and what the server's mechanism needs set."""
    knobs = {k: v for k, v in DEFAULTS.items() if k not in environ} | ISOLATED
    if params.short:
        knobs |= SHORT_KNOBS
    return knobs | drill.knobs(params) | dict(drill.mechanism(server).environ)


def fill(
    row: Row,
    tally: Tally,
    outcome: Outcome,
    params: LoadParams,
    load_started: float,
    workers_started: int | None,
    process: str,
) -> None:
    http, ws = tally.http, tally.ws
    row.requests, row.responses = http.sent, http.responses
    serving = (outcome.load_until or 0) - load_started
    row.rate = round(http.responses / serving if serving > 0 else http.rate, 1)
    row.by_method, row.latency_ms, row.failures = http.by_method, http.latency_ms, http.failures()
    row.ws_clients, row.ws_connects, row.ws_closes = ws.clients, ws.connects, ws.closes
    row.ws_failed_by_reason, row.ws_failed_reconnects = (
        ws.failed_reconnects,
        sum(ws.failed_reconnects.values()),
    )
    row.ws_longest_gap_s, row.ws_echoes, row.ws_wrong_echoes = ws.longest_gap_s, ws.echoes, ws.wrong_echoes
    row.rooms, row.rooms_allowed = tally.rooms, outcome.rooms_allowed
    row.rooms_allowance = outcome.rooms_allowance
    row.ws_slowest_connects_s = ws.slowest_connects_s
    row.recovery_s = None if outcome.recovery_s is None else round(outcome.recovery_s, 3)
    row.recovery, row.probes, row.probe_failures = outcome.recovery, outcome.probes, outcome.probe_failures
    row.timeline = outcome.timeline
    row.not_counted = [kind for kind in outcome.not_counted if kind in row.failures]
    row.allowed, row.allowance = outcome.allowed, outcome.allowance
    if params.strict and row.allowed:
        row.allowance = f"nothing (DRILL_STRICT=1; else {row.allowance})"
        row.allowed = 0
    if params.strict and row.rooms_allowed:
        row.rooms_allowance = f"nothing (DRILL_STRICT=1; else {row.rooms_allowance})"
        row.rooms_allowed = 0
    row.notes.extend(outcome.notes)
    if workers_started is not None:
        row.notes.append(f"{workers_started} {process} worker(s) started during the drill")
    row.verdict()


def nginx_retries(run_dir: Path) -> int | None:
    """Requests nginx sent to the app more than once (its access line lists an upstream_status per try);
    None without a local nginx log. A loss-free drill must not owe its 0 to these."""
    logs = sorted(run_dir.glob("nginx.log*"))
    if not logs:
        return None
    retried = 0
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                retried += "," in json.loads(line).get("upstream_status", "")
    return retried


def compress_logs(run_dir: Path) -> None:
    """nginx's access log is one JSON line per request (~12 MB per drill): kept, gzipped."""
    for log in sorted(run_dir.glob("*.log*")):
        if log.is_file() and log.suffix != ".gz":
            with log.open("rb") as plain, gzip.open(f"{log}.gz", "wb") as packed:
                shutil.copyfileobj(plain, packed)
            log.unlink()


def new_row(drill: Drill, server: AppServer) -> Row:
    how = drill.mechanism(server).how
    return Row(drill.name, drill.runtime, drill.what, server=server.name, mechanism=how)


def not_run(drill: Drill, server: AppServer, available: bool, site: Site, app: str) -> Row | None:
    """The row of a drill that does not run here or on this server, saying why; None when it runs."""
    row = new_row(drill, server)
    mechanism = drill.mechanism(server)
    if not mechanism.exists:
        row.status, row.reason = Status.NO_SUCH_EVENT, mechanism.how.removeprefix("no such event: ")
        return row
    missing = "" if available else stack.backend(drill.runtime).unavailable
    missing = missing or next(filter(None, (need(site) for need in drill.site_needs)), "")
    missing = missing or needs_demo(drill.demo_route, app) or server.missing()
    if not missing:
        try:
            stack.backend(drill.runtime, server.name)
        except StackError as error:
            missing = str(error)
    if missing:
        row.status, row.reason = Status.SKIPPED, missing
        return row
    return None


def run_drill(
    drill: Drill,
    params: LoadParams,
    report_dir: Path,
    base: Mapping[str, str] | None,
    wrk: str,
    site: Site | None = None,
    server: AppServer | None = None,
) -> Row:
    server = server or servers.get(servers.DEFAULT)
    row = new_row(drill, server)
    runtime = stack.backend(drill.runtime, server.name)
    environ = os.environ if base is None else base
    site = site or Site(environ)
    row.knobs = drill_knobs(drill, params, environ, server)
    knobs = {**row.knobs, **runtime.free_port_knobs()}
    if not runtime.processes_here:  # an engine's stack: its own project name and subnet
        knobs |= containers.project_knobs(drill.name)
    run_dir = report_dir / server.name / drill.name
    run_dir.mkdir(parents=True)
    row.load_average_before = load_average()
    timeline: dict[str, list[tuple[float, str]]] = {"events": [], "closes": []}
    try:
        with (
            stack.running(drill.runtime, knobs, run_dir, base=base, server=server.name) as handle,
            beside(handle, run_dir / SERIES_FILE),
        ):
            load = Load(handle.url, handle.ws_url, params, run_dir, wrk)
            ctx = Context(handle, load, params, run_dir, knobs, base, server, site=site)
            if drill.prepare:
                drill.prepare(ctx)
            if runtime.processes_here:
                ctx.watch = WorkerWatch(handle)
                ctx.watch.start()
            started = time.monotonic()
            try:
                load.start()
                time.sleep(params.seconds * LEAD)
                timeline["events"].append((time.time(), drill.what))
                outcome = drill.act(ctx)
                if outcome.load_until is None:
                    left = params.seconds - (time.monotonic() - started)
                    time.sleep(max(left, params.seconds * TAIL))
            finally:
                tally = load.stop()
                timeline["closes"] = list(load.sockets.closed_at)
                if ctx.watch:
                    ctx.watch.stop()
                for cleanup in ctx.cleanups:
                    cleanup()
                if not runtime.processes_here:
                    containers.save_logs(ctx.handle, run_dir)
            row.seconds = round(time.monotonic() - started, 1)
    except Exception as error:  # a drill that breaks is a row saying why, not the end of the run
        row.status, row.reason = Status.ERROR, f"{type(error).__name__}: {error}"
        return row
    finally:
        row.load_average_after = load_average()
        retries = nginx_retries(run_dir)
        compress_logs(run_dir)
        (run_dir / TIMELINE).write_text(json.dumps(timeline))
    respawned = ctx.watch.started() if ctx.watch else None
    fill(row, tally, outcome, params, load.started_at, respawned, server.process)
    if retries is not None:
        row.notes.append(f"nginx retried {retries} request(s) on a second try (upstream_status)")
    return row


def run_drills(
    names: list[str],
    params: LoadParams,
    out_root: Path,
    base: Mapping[str, str] | None = None,
    progress: Callable[[Row], None] = lambda row: None,
    nodes: NodeCommands | None = None,
    server_names: list[str] | None = None,
) -> tuple[Path, list[Row]]:
    """Every named drill on its own stack, for each server in turn (default: the blueprint); writes
    drill.json, index.html and servers.md into reports/drill-<time>/. A drill whose needs this site lacks
    (an engine, a swarm of several nodes, ...) is a skipped row."""
    drills = [BY_NAME[name] for name in names]
    chosen = [servers.get(name) for name in server_names or [servers.DEFAULT]]
    wrk = find_wrk()
    app = served_app(base)
    if needs_demo("/ws/rooms/{room}", app):
        params = replace(params, room_members=0)  # the rooms are the demo's; another app has none
    # Asked once per runtime the drills use (an engine: `docker info`); a drill on one that is not is skipped.
    available = {name: stack.backend(name).available() for name in dict.fromkeys(d.runtime for d in drills)}
    nodes = nodes or NodeCommands()
    site = Site(os.environ if base is None else base, nodes.down, nodes.up)
    report_dir = out_root / f"drill-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    report_dir.mkdir(parents=True, exist_ok=False)
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": params.describe(),
        "app": app,
        "params": params,
        "servers": [server.name for server in chosen],
        **machine(),
    }
    rows: list[Row] = []
    try:
        for server in chosen:
            for drill in drills:
                row = not_run(drill, server, available[drill.runtime], site, app)
                if row is None:
                    row = run_drill(drill, params, report_dir, base, wrk, site, server)
                rows.append(row)
                progress(row)
    except KeyboardInterrupt:
        interrupted = new_row(drill, server)
        interrupted.status, interrupted.reason = Status.ERROR, "interrupted (Ctrl-C)"
        rows.append(interrupted)
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["load_average_at_end"] = load_average()
    write_report(report_dir, rows, meta)
    return report_dir, rows
