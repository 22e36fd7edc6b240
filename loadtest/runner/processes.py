"""The Locust processes of a run: their environment (the LOCUST_* knobs as the stack resolves them), one
process or a master and workers on a free loopback port, stopped by pid; the master's exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploy.stackctl import stack
from deploy.stackctl.ports import LOOPBACK, free_port
from loadtest.errors import LoadtestError
from loadtest.stack import DEFAULT_RUN_DIR, ROOT
from service.settings import ConfigError


def locust_env(run_dir: Path = DEFAULT_RUN_DIR, knobs: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Locust processes' environment: the LOCUST_* knobs as resolved for the stack (environment,
    .env, profile, defaults), then `knobs` (e.g. a sweep's LOCUST_* axis)."""
    try:
        values = stack.configure(run_dir, {**os.environ, **(knobs or {})}).values
    except ConfigError as error:
        raise LoadtestError(str(error)) from None
    env = {k: v for k, v in os.environ.items() if k != "STACK_ENV_FILE"}
    env.update({name: value.value for name, value in values.items() if name.startswith("LOCUST_")})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def locust_setting(name: str, run_dir: Path = DEFAULT_RUN_DIR) -> int:
    return int(locust_env(run_dir)[name])


class Processes:
    """Locust processes started by this runner, stopped by pid. SIGINT, not TERM: on TERM Locust exits
    without writing its HTML report."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    def start(self, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        log = log_path.open("wb")
        self.logs.append(log)
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append(process)
        return process

    def stop(self, grace: float = 10.0) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace
        for process in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


def locust(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", *args]


def start_locust(
    processes: Processes,
    files: list[str],
    options: list[str],
    workers: int,
    report_dir: Path,
    env: dict[str, str],
    expect_workers: bool,
) -> subprocess.Popen[bytes]:
    """One Locust process, or a master and `workers` worker processes on a free loopback port."""
    if not workers:
        return processes.start(locust(*options), env, report_dir / "locust.log")
    port = str(free_port())
    master_options = ["--master", "--master-bind-host", LOOPBACK, "--master-bind-port", port]
    if expect_workers:
        master_options += ["--expect-workers", str(workers), "--expect-workers-max-wait", "30"]
    master = processes.start(locust(*options, *master_options), env, report_dir / "locust.log")
    for index in range(1, workers + 1):
        processes.start(
            locust("-f", ",".join(files), "--worker", "--master-host", LOOPBACK, "--master-port", port),
            env,
            report_dir / f"locust-worker-{index}.log",
        )
    return master


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def wait_for(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The master's exit code; on Ctrl-C or overtime it is interrupted, which still writes the reports."""
    try:
        return process.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stopped:
        process.send_signal(signal.SIGINT)
        if isinstance(stopped, KeyboardInterrupt):
            return process.wait()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        return 124
