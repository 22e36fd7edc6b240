"""How a sweep runs: for each combination, the ordering rules; a fresh stack with those knobs on free
ports (deploy/stackctl/stack.py, either runtime); the Locust scenario headless with thresholds off (a bad
combination is measured, not aborted); the stack stopped again."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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

from deploy.stackctl import rules, stack
from deploy.stackctl.ports import free_port_knobs
from loadtest.errors import LoadtestError
from loadtest.host import load_average, machine
from loadtest.limits import CPU_LIMIT
from loadtest.runner import locustfiles, parse_run_time, run_headless
from loadtest.status import Status
from loadtest.sweep.plan import SUMMARY_FIELDS, Axis, Load, Result, SweepError, combinations
from loadtest.sweep.report import DEFAULT_BOUNDS, Bounds, write_report
from service.settings import ConfigError


def refused_rules(findings: list[rules.Finding]) -> str:
    """The broken ordering rules, each with the knobs and values that break it."""
    return "; ".join(f"{finding.rule}: {finding.claim}" for finding in rules.errors(findings))


def run_combination(
    result: Result,
    load: Load,
    base_env: Mapping[str, str] | None,
    runtime: stack.Runtime,
    report_dir: Path,
    step: Callable[[str], None],
) -> None:
    step("make check")
    refused = refused_rules(stack.findings(result.knobs, runtime, base_env))
    if refused:
        result.status, result.refused_rule = Status.REFUSED, refused
        return
    step("starting the stack")
    knobs = {**result.knobs, **free_port_knobs(runtime)}
    run_dir = report_dir / "stacks" / f"{result.index:02d}"
    try:
        with stack.running(runtime, knobs, run_dir, base=base_env) as handle:
            step(f"{load.scenario}: {load.users} users for {load.run_time}")
            summary = run_headless(
                host=handle.url,
                scenario=load.scenario,
                users=load.users,
                spawn_rate=load.spawn_rate,
                run_time=load.run_time,
                out_dir=report_dir / "locust" / f"{result.index:02d}",
                workers=load.workers,
                thresholds=False,
                run_dir=handle.run_dir,
                locust_knobs={k: v for k, v in result.knobs.items() if k.startswith("LOCUST_")},
            )
            step("stopping the stack")
    except (ConfigError, stack.StackError) as error:
        result.status, result.note = Status.ERROR, f"stack: {error}"
        return
    except LoadtestError as error:
        result.status, result.note = Status.ERROR, f"load test: {error}"
        return
    values = summary.to_dict()
    result.metrics = {name: values.get(name) for name in SUMMARY_FIELDS}
    result.locust_report = os.path.relpath(Path(summary.report_dir), report_dir)
    result.status = Status.OK if values.get("requests") else Status.ERROR
    if not values.get("requests"):
        result.note = f"Locust made no requests (exit {values.get('exit_code')})"


def check_load(load: Load) -> None:
    locustfiles(load.scenario)
    parse_run_time(load.run_time)
    if load.users < 1 or load.spawn_rate <= 0 or load.workers < 0:
        raise SweepError(f"USERS={load.users}, SPAWN_RATE={load.spawn_rate}: need at least 1 user")


def run_sweep(
    axes: Sequence[Axis],
    load: Load,
    out_root: Path,
    bounds: Bounds = DEFAULT_BOUNDS,
    base_env: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> tuple[Path, list[Result], str]:
    """`base_env`: the environment the knobs start from (default: this process's and `.env`)."""
    console = console or Console(stderr=True)
    # A combination the rules refuse is recorded and never started, so ALLOW_UNSAFE_CONFIG changes nothing.
    check_load(load)
    try:
        runtime = stack.configured_runtime(base=base_env)
    except ConfigError as error:
        raise SweepError(str(error)) from None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report_dir = out_root / f"sweep-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=False)
    results = [Result(i, knobs) for i, knobs in enumerate(combinations(axes), start=1)]
    meta: dict[str, Any] = {
        "sweep": " ".join(f"{a.knob}={','.join(a.values)}" for a in axes),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime": runtime,
        "scenario": load.scenario,
        "users": load.users,
        "spawn_rate": load.spawn_rate,
        "run_time": load.run_time,
        "locust_workers": load.workers,
        **machine(),
        "load_average_at_start": load_average(),
        "note": "the load generator (Locust) runs on the same machine as the stack",
    }
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    interrupted = False

    def on_interrupt(signum: int, frame: Any) -> None:
        # The Locust runner turns Ctrl-C into "stop this run and summarise it"; remember that the user
        # wanted the whole sweep to stop.
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    with sigint_handler(on_interrupt), Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("sweep", total=len(results))
        for result in results:
            prefix = f"[{result.index}/{len(results)}] {result.label}"

            def step(what: str, prefix: str = prefix) -> None:
                progress.update(task, description=f"{prefix}: {what}")

            try:
                run_combination(result, load, base_env, runtime, report_dir, step)
            except OSError as error:
                result.status, result.note = Status.ERROR, f"{type(error).__name__}: {error}"
            except KeyboardInterrupt:
                interrupted = True
            if interrupted:
                result.status = Status.ERROR
                result.note = "interrupted (Ctrl-C): numbers cover part of the run"
            progress.console.print(f"{prefix}: {outcome(result)}", highlight=False)
            progress.advance(task)
            if interrupted:
                break
        progress.update(task, description=f"sweep done: {len(results)} combinations")
    for result in results:
        if result.status == Status.PENDING:
            result.status, result.note = Status.ERROR, "not run: the sweep was interrupted"
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["load_average_at_end"] = load_average()
    recommendation = write_report(report_dir, axes, results, bounds, meta)
    if interrupted:
        raise SweepError(f"interrupted; the partial report is in {report_dir}")
    return report_dir, results, recommendation


@contextmanager
def sigint_handler(handler: Callable[[int, Any], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def outcome(result: Result) -> str:
    if result.status == Status.REFUSED:
        return f"refused — {result.refused_rule}"
    if result.status != Status.OK:
        return f"{result.status} — {result.note}"
    m = result.metric
    valid = "" if result.metrics.get("cpu_valid") else f" (Locust CPU > {CPU_LIMIT:g} %: numbers invalid)"
    return (
        f"{m('rps') or 0:.1f} req/s, p50 {m('p50_ms') or 0:.0f} ms, p95 {m('p95_ms') or 0:.0f} ms, "
        f"p99 {m('p99_ms') or 0:.0f} ms, failures {m('fail_ratio') or 0:.1%}{valid}"
    )
