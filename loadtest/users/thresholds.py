"""The run's verdict: the thresholds (LOCUST_MAX_FAIL_RATIO, LOCUST_MAX_P95) decide the exit code, and the
run summary (stats, thresholds, Locust's CPU) goes to --summary-file, where the runner reads it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsEntry

from loadtest.limits import CPU_LIMIT, THRESHOLD_EXIT_CODE
from loadtest.users.cpu import cpu_watch
from loadtest.users.hooks import listener
from loadtest.users.options import KNOBS, option

log = logging.getLogger("loadtest")


class RecordedError(Protocol):
    """A row of Locust's error table, locust.stats.StatsError."""

    def to_dict(self) -> dict[str, Any]: ...


def stats_row(entry: StatsEntry) -> dict[str, Any]:
    return {
        "type": entry.method or "",
        "name": entry.name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": round(entry.total_rps, 3),
        "avg_ms": round(entry.avg_response_time, 2),
        "p50_ms": entry.get_response_time_percentile(0.5) if entry.num_requests else 0,
        "p95_ms": entry.get_response_time_percentile(0.95) if entry.num_requests else 0,
        "p99_ms": entry.get_response_time_percentile(0.99) if entry.num_requests else 0,
        "max_ms": round(entry.max_response_time, 2),
    }


def run_summary(environment: Environment) -> dict[str, Any]:
    runner = environment.runner
    stats = environment.stats
    total = stats_row(stats.total)
    total["fail_ratio"] = stats.total.fail_ratio
    max_fail_ratio = float(option(environment, "max_fail_ratio", KNOBS.locust_max_fail_ratio))
    max_p95 = float(option(environment, "max_p95", KNOBS.locust_max_p95))
    violations = []
    if total["fail_ratio"] > max_fail_ratio:
        violations.append(f"failure ratio {total['fail_ratio']:.2%} > {max_fail_ratio:.2%}")
    if max_p95 > 0 and total["p95_ms"] > max_p95:
        violations.append(f"p95 {total['p95_ms']:g} ms > {max_p95:g} ms")
    cpu_limit = float(option(environment, "cpu_limit", CPU_LIMIT))
    peaks = {"master" if isinstance(runner, MasterRunner) else "local": cpu_watch.peak, **cpu_watch.peaks}
    locust_warning = bool(
        runner and (runner.cpu_warning_emitted or getattr(runner, "worker_cpu_warning_emitted", False))
    )
    recorded_errors: Iterable[RecordedError] = stats.errors.values()
    return {
        "total": total,
        "rows": [
            stats_row(entry) for entry in sorted(stats.entries.values(), key=lambda e: (e.method, e.name))
        ],
        "errors": [error.to_dict() for error in recorded_errors],
        "thresholds": {"max_fail_ratio": max_fail_ratio, "max_p95_ms": max_p95, "violations": violations},
        "cpu": {
            "limit_percent": cpu_limit,
            "peak_percent": max(peaks.values()),
            "peaks": peaks,
            "locust_warning": locust_warning,
            "valid": not locust_warning and max(peaks.values()) <= cpu_limit,
        },
        "workers": len(cpu_watch.peaks),
    }


@listener(events.quitting)
def judge_run(environment: Environment, **_: Any) -> None:
    """Thresholds decide the exit code (not Locust's "any failure = 1"); the summary goes to a file."""
    if environment.runner is None or isinstance(environment.runner, WorkerRunner):
        return
    summary = run_summary(environment)
    if not summary["cpu"]["valid"]:
        log.warning(
            "a Locust process reached %.0f%% CPU (limit %.0f%%): the numbers of this run are not valid",
            summary["cpu"]["peak_percent"],
            summary["cpu"]["limit_percent"],
        )
    if summary["thresholds"]["violations"]:
        log.error("threshold violated: %s", "; ".join(summary["thresholds"]["violations"]))
        environment.process_exit_code = THRESHOLD_EXIT_CODE
    elif not environment.runner.exceptions:
        environment.process_exit_code = 0
    target = option(environment, "summary_file", "")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")
