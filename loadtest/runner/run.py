"""One headless run: the input and the host checked, the stack asked what it runs, Locust started (one
process, or a master and workers) with thresholds deciding its exit code and the stack sampled beside it,
and the run summarised into its report directory."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from loadtest.errors import LoadtestError
from loadtest.runner.plan import locustfiles, parse_run_time, report_dir
from loadtest.runner.processes import Processes, locust_env, start_locust, wait_for
from loadtest.runner.report import mark_report, write_stack_settings
from loadtest.runner.stackside import add_stack_charts, sampling
from loadtest.runner.summary import Summary, summarise
from loadtest.runner.trust import tls_target, trust_env, trusting
from loadtest.stack import DEFAULT_RUN_DIR, check_host, stack_info


def run_headless(
    host: str,
    scenario: str,
    users: int,
    spawn_rate: float,
    run_time: str,
    out_dir: Path | None = None,
    workers: int = 0,
    shape: str | None = None,
    thresholds: bool = True,
    *,
    run_dir: Path = DEFAULT_RUN_DIR,
    extra_args: Sequence[str] = (),
    locust_knobs: Mapping[str, str] | None = None,
) -> Summary:
    """Run Locust headless (master + `workers` processes when workers > 0) and summarise the run.

    `extra_args` go to Locust's command line (e.g. ["--tags", "x"], ["--cpu-limit", "50"]);
    `locust_knobs` override LOCUST_* knobs for this run only.
    Raises LoadtestError (one line) before starting anything when the input or the host is wrong.
    """
    host, ca = tls_target(check_host(host), run_dir)
    files = locustfiles(scenario, shape)
    seconds = parse_run_time(run_time)
    if users < 1 or spawn_rate <= 0 or workers < 0:
        raise LoadtestError(
            f"USERS={users}, SPAWN_RATE={spawn_rate}, LOCUST_WORKERS={workers}: need >= 1, > 0, >= 0"
        )
    env = {**locust_env(run_dir, locust_knobs), **trust_env(ca)}
    with trusting(ca):
        info = stack_info(host)
    name = Path(scenario).stem if scenario.endswith(".py") else scenario
    reports = report_dir(name, out_dir)
    write_stack_settings(reports, host, info, run_dir)

    options = [
        "-f", ",".join(files), "--headless", "-H", host,
        "-u", str(users), "-r", f"{spawn_rate:g}", "-t", run_time,
        "--html", str(reports / "report.html"),
        "--csv", str(reports / "locust"), "--csv-full-history",
        "--json-file", str(reports / "locust"),
        "--summary-file", str(reports / "run.json"),
        "--profile", name, "--only-summary",
    ]  # fmt: skip
    if not thresholds:
        options += ["--max-fail-ratio", "1", "--max-p95", "0"]
    options += extra_args
    processes = Processes()
    with sampling(host, run_dir, reports):
        try:
            master = start_locust(processes, files, options, workers, reports, env, expect_workers=True)
            exit_code = wait_for(master, seconds + 60 + (30 if workers else 0))
        finally:
            processes.stop()

    run = {"scenario": name, "host": host, "users": users, "spawn_rate": spawn_rate, "run_time": run_time}
    summary = summarise(reports, exit_code, **run, workers=workers, shape=shape)
    (reports / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    add_stack_charts(reports / "report.html", reports, host, run_dir)
    mark_report(reports / "report.html", summary)
    return summary
