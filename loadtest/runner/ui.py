"""The Locust web UI with a user-class and shape picker, until Ctrl-C: Locust processes here, or for a
stack whose runtime runs Locust itself (Runtime.serves_locust_ui: docker's compose profile `loadtest`); the
stack sampled beside it (its Stack tab))."""

from __future__ import annotations

import signal
from pathlib import Path

from deploy.stackctl import stack
from deploy.stackctl.ports import LOOPBACK
from loadtest.errors import LoadtestError
from loadtest.runner.plan import SCENARIO_DIR, SHAPE_DIR, report_dir
from loadtest.runner.processes import Processes, interrupt, locust_env, start_locust
from loadtest.runner.report import write_stack_settings
from loadtest.runner.stackside import add_stack_charts, sampling, write_stack_page
from loadtest.runner.trust import our_stack, tls_target, trust_env, trusting
from loadtest.sampler.sampler import SERIES_FILE
from loadtest.stack import DEFAULT_RUN_DIR, check_host, stack_info
from service.settings import ConfigError


def run_ui(
    host: str, workers: int, web_port: int, run_dir: Path = DEFAULT_RUN_DIR, out_dir: Path | None = None
) -> int:
    """The Locust web UI with a user-class and shape picker, until Ctrl-C (or TERM)."""
    host, ca = tls_target(check_host(host), run_dir)
    with trusting(ca):
        info = stack_info(host)
    started = our_stack(host, run_dir)
    try:
        runtime = started.runtime if started else stack.configured_runtime(run_dir)
    except ConfigError as error:
        raise LoadtestError(str(error)) from None
    reports = report_dir("ui", out_dir)
    write_stack_settings(reports, host, info, run_dir)
    if stack.backend(runtime).serves_locust_ui:
        with sampling(host, run_dir, reports):
            code = run_ui_in_stack(run_dir, runtime, workers, web_port)
        write_stack_page(reports / "stack.html", reports, host, run_dir)
        return code
    env = {**locust_env(run_dir), **trust_env(ca)}
    files = [str(SCENARIO_DIR), str(SHAPE_DIR)]
    options = [
        "-f", ",".join(files), "--class-picker", "-H", host,
        "--web-host", LOOPBACK, "--web-port", str(web_port),
        "--html", str(reports / "report.html"), "--summary-file", str(reports / "run.json"),
        "--stack-series", str(reports / SERIES_FILE),
        "--stack-settings", str(reports / "stack-settings.json"),
    ]  # fmt: skip
    processes = Processes()
    signal.signal(signal.SIGTERM, interrupt)
    with sampling(host, run_dir, reports):
        try:
            master = start_locust(processes, files, options, workers, reports, env, expect_workers=False)
            print(
                f"Locust web UI: http://{LOOPBACK}:{web_port}  (target {host}, {workers} workers; Ctrl-C "
                f"stops; the stack's side: its Stack tab)\nlogs and the final report: {reports}",
                flush=True,
            )
            code = master.wait()
        except KeyboardInterrupt:
            code = 0
        finally:
            processes.stop()
    add_stack_charts(reports / "report.html", reports, host, run_dir)
    return code


def run_ui_in_stack(run_dir: Path, runtime: stack.Runtime, workers: int, web_port: int) -> int:
    """Locust's web UI as the stack's runtime runs it (docker: the compose profile `loadtest`, locust-master
    and N x locust-worker), in the foreground. Its containers cannot read the sampler's file: the stack's
    charts are in the report dir's stack.html."""
    try:
        stack.locust_web_ui(run_dir, runtime, workers, web_port)
    except KeyboardInterrupt:
        return 0
    except (ConfigError, stack.StackError) as error:
        raise LoadtestError(str(error)) from None
    return 0
