"""How a bench runs: the rows in order, each server started once for the rows that use it and stopped
before the next one starts, one measurement per row, then the ratios and the report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from loadtest.apps import needs_demo
from loadtest.bench import capacity, fanout, servers
from loadtest.bench.report import write_report
from loadtest.bench.rows import HELLO_PATH, BenchError, Params, Row, RowSpec, Unavailable
from loadtest.bench.wrk import run_wrk
from loadtest.host import find_wrk, load_average, machine
from loadtest.sampler.sampler import SERIES_FILE, Sampler, beside
from loadtest.status import Status

REQUEST_TIMEOUT_S = 10.0
WARM_UP_S = 1.0  # wrk before each throughput row, not counted: first requests, lazy imports, caches


def measure(row: Row, server: servers.Server, params: Params, wrk: str, row_dir: Path) -> None:
    spec = row.spec
    url = server.url(spec.target)

    def roles() -> dict[str, list[int]]:
        return server.roles(spec.target)

    if spec.kind == "slow":
        row.values = capacity.slow_held(
            wrk, url, params.slow_n, params.slow_delay, params.seconds, row_dir, roles
        )
    elif spec.kind == "websocket":
        ws_url = url.replace("http://", "ws://", 1)
        row.values = capacity.websockets_held(ws_url, params.ws_n, params.hold_seconds(), server.worker_pids)
    elif spec.kind == "rooms":
        ws_url = url.replace("http://", "ws://", 1)
        row.values = fanout.rooms_fanout(
            ws_url, url, params.rooms_n, params.rooms_rate, params.seconds, roles, params.short
        )
        if row.values["client_bound"]:
            row.note = (
                "the members' process went above the CPU limit: it measured itself as much as the server"
            )
    else:
        target = f"{url}{HELLO_PATH if spec.server == 'bare' else params.path}"
        handle = server.handle if spec.sampled and isinstance(server, servers.Stack) else None
        if spec.sampled and handle is None:
            raise BenchError(f"{spec.name}: the sampler needs the blueprint stack")
        with beside(handle, row_dir / SERIES_FILE) as sampler:
            run_wrk(wrk, target, WARM_UP_S, params.connections, REQUEST_TIMEOUT_S, row_dir / "warm-up", roles)
            before = set(server.worker_pids())
            cpu_before = sampler.cpu_seconds if sampler else 0.0
            run = run_wrk(wrk, target, params.seconds, params.connections, REQUEST_TIMEOUT_S, row_dir, roles)
            row.values = {**run.fields(), "workers_replaced": len(before - set(server.worker_pids()))}
            if sampler is not None:
                row.values["sampler_cpu_percent"] = sampler_cpu(sampler, cpu_before, params.seconds)
        if row.values["workers_replaced"]:
            row.note = f"{row.values['workers_replaced']} worker(s) replaced during the row (max_requests)"
    row.status = Status.OK


def sampler_cpu(sampler: Sampler, before: float, seconds: float) -> float:
    """The sampler thread's CPU during the measured part, in % of one CPU (its samples so far counted)."""
    return round((sampler.cpu_seconds - before) / seconds * 100, 2)


def sampler_cost(rows: list[Row]) -> dict[str, float | None]:
    """The sampled row beside the same stack unsampled: requests/s and server CPU per request (goal: both
    within 2 %), and the sampler's own CPU."""
    ok = {r.spec.name: r.values for r in rows if r.status == Status.OK and r.spec.kind == "throughput"}
    plain, sampled = ok.get("blueprint-nginx"), ok.get("blueprint-nginx-sampled")
    if plain is None or sampled is None:
        return {}

    def over(top: float | None, bottom: float | None) -> float | None:
        return round(top / bottom, 3) if top is not None and bottom else None

    return {
        "rps_sampled_over_unsampled": over(sampled["rps"], plain["rps"]),
        "server_cpu_unsampled_over_sampled": over(
            plain["server_cpu_us_per_request"], sampled["server_cpu_us_per_request"]
        ),
        "sampler_cpu_percent": sampled.get("sampler_cpu_percent"),
    }


def ratios(rows: list[Row]) -> dict[str, float | None]:
    """Each throughput row's ratio to bare, and the issue's two goals by requests/s and by CPU per request."""
    measured = [r for r in rows if r.status == Status.OK and r.spec.kind == "throughput"]
    rps = {r.spec.name: r.values.get("rps") for r in measured}
    bare = rps.get("bare")
    for row in measured:
        row.values["ratio_to_bare"] = round(row.values["rps"] / bare, 3) if bare else None

    cpu = {r.spec.name: r.values.get("server_cpu_us_per_request") for r in measured}

    def over(values: dict[str, Any], a: str, b: str) -> float | None:
        top, bottom = values.get(a), values.get(b)
        return round(top / bottom, 3) if top is not None and bottom else None

    # By CPU per request too: on a shared machine requests/s follow the neighbours' load, CPU per request
    # much less so (docs/PERFORMANCE.md).
    return {
        "blueprint_direct_over_bare": over(rps, "blueprint-direct", "bare"),
        "blueprint_nginx_over_direct": over(rps, "blueprint-nginx", "blueprint-direct"),
        "blueprint_direct_over_bare_by_cpu": over(cpu, "bare", "blueprint-direct"),
        "blueprint_nginx_over_direct_by_cpu": over(cpu, "blueprint-direct", "blueprint-nginx"),
    }


def unix_vs_tcp(rows: list[Row]) -> dict[str, float | None]:
    """The blueprint through nginx over a unix socket beside TCP: requests/s, and the app's (gunicorn's) and
    every server process's CPU per request, TCP over unix (above 1: the socket costs less)."""
    ok = {r.spec.name: r.values for r in rows if r.status == "ok" and r.spec.kind == "throughput"}
    tcp, unix = ok.get("blueprint-nginx"), ok.get("blueprint-nginx-unix")
    if tcp is None or unix is None:
        return {}

    def over(top: float | None, bottom: float | None) -> float | None:
        return round(top / bottom, 3) if top is not None and bottom else None

    def app_cpu(values: dict[str, Any]) -> float | None:
        by_role: dict[str, float | None] = values.get("server_cpu_us_by_role") or {}
        return by_role.get("app")

    return {
        "rps_unix_over_tcp": over(unix["rps"], tcp["rps"]),
        "app_cpu_tcp_over_unix": over(app_cpu(tcp), app_cpu(unix)),
        "server_cpu_tcp_over_unix": over(tcp["server_cpu_us_per_request"], unix["server_cpu_us_per_request"]),
    }


def proxy_hops(rows: list[Row]) -> dict[str, dict[str, float | None]]:
    """The hop through each front (nginx, HAProxy, Caddy) to the same app, in CPU per request: all the
    path's processes through it minus the app alone direct; the front's own share; the app's extra."""
    ok: dict[str, dict[str, Any]] = {
        r.spec.target: r.values
        for r in rows
        if r.status == Status.OK
        and r.spec.kind == "throughput"
        and r.spec.server == "blueprint"
        and not r.spec.sampled
    }
    direct = ok.get("direct")
    if direct is None:
        return {}

    def minus(a: float | None, b: float | None) -> float | None:
        return round(a - b, 1) if a is not None and b is not None else None

    hops: dict[str, dict[str, float | None]] = {}
    for front in servers.FRONTS:
        values = ok.get(front)
        if values is None:
            continue
        by_role = values.get("server_cpu_us_by_role") or {}
        hops[front] = {
            "rps": values["rps"],
            "hop_us": minus(values["server_cpu_us_per_request"], direct["server_cpu_us_per_request"]),
            "front_us": by_role.get(front),
            "log_pipes_us": by_role.get("log pipes"),
            "app_extra_us": minus(by_role.get("app"), (direct.get("server_cpu_us_by_role") or {}).get("app")),
        }
    return hops


def run_bench(
    specs: list[RowSpec],
    params: Params,
    out_root: Path,
    base: Mapping[str, str] | None = None,
    console: Console | None = None,
    on_row: Callable[[Row], None] | None = None,
) -> tuple[Path, list[Row], dict[str, Any]]:
    """`base`: the environment the blueprint's knobs come from (default: this process's and `.env`)."""
    console = console or Console(stderr=True)
    wrk = find_wrk()
    config = servers.blueprint_config(params, base)
    # Unset, both come from the blueprint's config: WEB_CONCURRENCY and PROFILE of the environment, `.env`.
    settings = config.settings
    params = dataclasses.replace(
        params, workers=params.workers or settings.workers, profile=params.profile or settings.profile
    )
    app = settings.app_module
    most = config.settings.app_max_delay
    slow = any(spec.kind == "slow" and not needs_demo(spec.needs, app) for spec in specs)
    if slow and params.slow_delay > most:
        raise BenchError(f"BENCH_SLOW_DELAY={params.slow_delay:g} is above APP_MAX_DELAY={most:g}")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report_dir = out_root / f"bench-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=False)
    rows = [Row(spec) for spec in specs]
    for row in rows:
        if missing := needs_demo(row.spec.needs, app):
            row.status, row.note = Status.SKIPPED, missing
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_average(),
        "settings": params.describe(),
        "app": app,
        "params": dataclasses.asdict(params),
        "wrk": wrk,
    }
    ctx = servers.Context(params, params.workers, config, base, report_dir)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    server: servers.Server | None = None
    server_name, problem = "", (Status.PENDING, "")  # (status, note) of a server that did not start
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("bench", total=len(rows))
        try:
            for index, row in enumerate(rows, start=1):
                prefix = f"[{index}/{len(rows)}] {row.spec.name}"
                if row.status == Status.PENDING and row.spec.server != server_name:
                    if server is not None:
                        progress.update(task, description=f"{prefix}: stopping {server_name}")
                        server.stop()
                        server = None
                    server_name = row.spec.server
                    progress.update(task, description=f"{prefix}: starting {server_name}")
                    try:
                        server = servers.start(server_name, ctx)
                    except Unavailable as error:
                        problem = (Status.SKIPPED, str(error))
                    except BenchError as error:
                        problem = (Status.ERROR, str(error))
                if row.status != Status.PENDING:
                    pass  # skipped before the run
                elif server is None:
                    row.status, row.note = problem
                else:
                    progress.update(task, description=f"{prefix}: measuring ({row.spec.about})")
                    try:
                        measure(row, server, params, wrk, report_dir / "rows" / row.spec.name)
                    except Unavailable as error:
                        row.status, row.note = Status.SKIPPED, str(error)
                    except BenchError as error:
                        row.status, row.note = Status.ERROR, str(error)
                progress.advance(task)
                if on_row:
                    on_row(row)
        except KeyboardInterrupt:
            for row in rows:
                if row.status == Status.PENDING:
                    row.status, row.note = Status.ERROR, "interrupted (Ctrl-C)"
        finally:
            if server is not None:
                progress.update(task, description=f"stopping {server_name}")
                server.stop()
        progress.update(task, description=f"bench done: {len(rows)} rows")
    meta["goals"] = ratios(rows)
    meta["unix_vs_tcp"] = unix_vs_tcp(rows)
    meta["sampler"] = sampler_cost(rows)
    meta["proxy_hops"] = proxy_hops(rows)
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["load_average_after"] = load_average()
    write_report(report_dir, rows, meta)
    return report_dir, rows, meta
