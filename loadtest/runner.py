"""Run Locust against the stack and summarise the run: the Python API and CLI behind `make loadtest`.

    python -m loadtest.runner --scenario mixed --users 20 --spawn-rate 5 --run-time 30s
    python -m loadtest.runner --ui                      # web UI with a scenario picker

Locust runs in subprocesses (it monkey-patches the interpreter with gevent), so importing this module is
safe anywhere: it never imports locust or gevent.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deploy.stackctl import stack, tls
from deploy.stackctl.config import KNOBS
from deploy.stackctl.ports import LOOPBACK, free_port
from loadtest.limits import CPU_LIMIT, THRESHOLD_EXIT_CODE
from loadtest.stack import (
    DEFAULT_RUN_DIR,
    ROOT,
    LoadtestError,
    check_host,
    default_host,
    stack_info,
    started_stack,
)
from service.settings import ConfigError, Settings, load_settings

SCENARIO_DIR = ROOT / "loadtest" / "scenarios"
SHAPE_DIR = ROOT / "loadtest" / "shapes"
REPORTS_DIR = ROOT / "reports"
# Every loadtest/scenarios/<name>_users.py is a scenario; mixed (all of them) is the default.
SCENARIOS = (
    "mixed",
    *sorted({p.stem.removesuffix("_users") for p in SCENARIO_DIR.glob("*_users.py")} - {"mixed"}),
)
SHAPES = ("step", "spike", "soak")
WS_RTT_ROW = ("WS", "/ws/echo round-trip")
CPU_WARNINGS = ("CPU usage above", "exceeded cpu threshold", "CPU usage was too high")
TIMESPAN = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s?)?$")


@dataclass
class Summary:
    report_dir: Path
    exit_code: int
    scenario: str
    host: str
    users: int
    spawn_rate: float
    run_time: str
    workers: int = 0
    shape: str | None = None
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    failures: int = 0
    fail_ratio: float = 0.0
    ws_rtt_p50_ms: float | None = None
    ws_rtt_p95_ms: float | None = None
    cpu_valid: bool = True
    cpu_peak_percent: float | None = None
    cpu_limit_percent: float = CPU_LIMIT
    threshold_violations: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["report_dir"] = str(self.report_dir)
        return data

    def row(self, request_type: str, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if (r["type"], r["name"]) == (request_type, name)), None)


def parse_run_time(run_time: str) -> int:
    match = TIMESPAN.match(run_time.strip())
    if not run_time.strip() or not match:
        raise LoadtestError(f"RUN_TIME={run_time!r} is not a duration like 30s, 5m or 1h30m")
    return sum(int(match[unit] or 0) * factor for unit, factor in (("h", 3600), ("m", 60), ("s", 1)))


def locustfiles(scenario: str, shape: str | None = None) -> list[str]:
    """A scenario name, or the path of any locustfile; plus the shape's file."""
    if scenario in SCENARIOS:
        files = [SCENARIO_DIR / f"{scenario}_users.py"]
    elif scenario.endswith(".py") and Path(scenario).is_file():
        files = [Path(scenario).resolve()]
    else:
        raise LoadtestError(f"SCENARIO={scenario!r} is unknown; choose from {', '.join(SCENARIOS)}")
    if shape is not None:
        if shape not in SHAPES:
            raise LoadtestError(f"SHAPE={shape!r} is unknown; choose from {', '.join(SHAPES)} (or none)")
        files.append(SHAPE_DIR / f"{shape}_shape.py")
    return [str(f) for f in files]


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


def tls_target(host: str, run_dir: Path) -> tuple[str, Path | None]:
    """For the stack of run_dir serving HTTPS (NGINX_TLS=1): its https URL instead of its plain one (which
    only redirects, and a WebSocket handshake follows no redirect), and the local CA a client of it must
    trust (None for a certificate the system already trusts, or another host). Nothing goes unverified."""
    started = stack.recorded(run_dir)
    if started is None:
        return host, None
    settings = recorded_settings(started)
    if not settings.nginx_tls:
        return host, None
    https = tls.https_url(settings)
    plain = f"http://{tls.client_host(settings.nginx_listen_address)}:{settings.http_port}"
    if host.rstrip("/") == plain:
        host = https
    return host, tls.files(settings).ca if serves(host, https) else None


def serves(host: str, https_url: str) -> bool:
    return urlsplit(host).scheme == "https" and urlsplit(host).port == urlsplit(https_url).port


def our_stack(host: str, run_dir: Path) -> stack.Recorded | None:
    """What run_dir records of the stack it started, when `host` is its URL or its HTTPS URL."""
    plain, started = started_stack(host, run_dir), stack.recorded(run_dir)
    if plain is not None or started is None:
        return plain
    settings = recorded_settings(started)
    return started if settings.nginx_tls and serves(host, tls.https_url(settings)) else None


def recorded_settings(started: stack.Recorded) -> Settings:
    return load_settings(**{KNOBS[n]: v.value for n, v in started.values.items() if n in KNOBS})


def trust_env(ca: Path | None) -> dict[str, str]:
    """The environment that makes Python's ssl (Locust's FastHttpUser, websocket-client, urllib) and
    requests trust `ca`."""
    return {"SSL_CERT_FILE": str(ca), "REQUESTS_CA_BUNDLE": str(ca)} if ca else {}


@contextlib.contextmanager
def trusting(ca: Path | None) -> Iterator[None]:
    """This process's own requests (stack_info) trust `ca` for the block."""
    saved = {name: os.environ.get(name) for name in trust_env(ca)}
    os.environ.update(trust_env(ca))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def locust_setting(name: str, run_dir: Path = DEFAULT_RUN_DIR) -> int:
    return int(locust_env(run_dir)[name])


def write_stack_settings(report_dir: Path, host: str, info: dict[str, Any], run_dir: Path) -> None:
    """What the stack runs with: the values it was started with when it is the stack of run_dir; else
    only what its app process reports of its own layers (/api/info), said as such."""
    started = our_stack(host, run_dir)
    if started is not None:
        record: dict[str, Any] = {
            "source": f"the stack started in {run_dir} ({started.runtime} runtime): every layer",
            "settings": started.settings(),
        }
    elif not info:
        record = {"source": f"{host}: an app without /api/info (not the demo): its settings are unknown"}
    else:
        layers = info.get("settings_layers") or []
        record = {
            "source": f"{host}/api/info: only the layers the app process receives ({', '.join(layers)})",
            "pid": info.get("pid"),
            "settings": {name.upper(): value for name, value in (info.get("settings") or {}).items()},
        }
    (report_dir / "stack-settings.json").write_text(json.dumps(record, indent=2) + "\n")
    if started is not None and (run_dir / "stack.env").is_file():
        shutil.copy(run_dir / "stack.env", report_dir / "stack.env")


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
    report_dir = out_dir or REPORTS_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"
    report_dir.mkdir(parents=True, exist_ok=True)
    write_stack_settings(report_dir, host, info, run_dir)

    options = [
        "-f", ",".join(files), "--headless", "-H", host,
        "-u", str(users), "-r", f"{spawn_rate:g}", "-t", run_time,
        "--html", str(report_dir / "report.html"),
        "--csv", str(report_dir / "locust"), "--csv-full-history",
        "--json-file", str(report_dir / "locust"),
        "--summary-file", str(report_dir / "run.json"),
        "--profile", name, "--only-summary",
    ]  # fmt: skip
    if not thresholds:
        options += ["--max-fail-ratio", "1", "--max-p95", "0"]
    options += extra_args
    processes = Processes()
    try:
        master = start_locust(processes, files, options, workers, report_dir, env, expect_workers=True)
        exit_code = wait_for(master, seconds + 60 + (30 if workers else 0))
    finally:
        processes.stop()

    run = {"scenario": name, "host": host, "users": users, "spawn_rate": spawn_rate, "run_time": run_time}
    summary = summarise(report_dir, exit_code, **run, workers=workers, shape=shape)
    (report_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    mark_report(report_dir / "report.html", summary)
    return summary


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


def summarise(report_dir: Path, exit_code: int, **run: Any) -> Summary:
    summary = Summary(report_dir=report_dir, exit_code=exit_code, **run)
    try:
        data = json.loads((report_dir / "run.json").read_text())
    except (OSError, ValueError):
        data = None
    if data is not None:
        total = data["total"]
        summary.rows, summary.errors = data["rows"], data["errors"]
        summary.threshold_violations = data["thresholds"]["violations"]
        summary.cpu_peak_percent = data["cpu"]["peak_percent"]
        summary.cpu_limit_percent = data["cpu"]["limit_percent"]
        summary.cpu_valid = bool(data["cpu"]["valid"])
    else:
        total = aggregated_csv_row(report_dir / "locust_stats.csv")
    summary.requests, summary.failures = int(total.get("requests", 0)), int(total.get("failures", 0))
    summary.fail_ratio = summary.failures / summary.requests if summary.requests else 0.0
    summary.rps = float(total.get("rps", 0.0))
    summary.p50_ms, summary.p95_ms, summary.p99_ms = (
        float(total.get(k, 0.0)) for k in ("p50_ms", "p95_ms", "p99_ms")
    )
    if rtt := summary.row(*WS_RTT_ROW):
        summary.ws_rtt_p50_ms, summary.ws_rtt_p95_ms = float(rtt["p50_ms"]), float(rtt["p95_ms"])
    if any(warning in text for text in logs(report_dir) for warning in CPU_WARNINGS):
        summary.cpu_valid = False
    return summary


def aggregated_csv_row(path: Path) -> dict[str, Any]:
    try:
        with path.open() as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    except (OSError, StopIteration, KeyError):
        return {}
    return {
        "requests": row["Request Count"], "failures": row["Failure Count"], "rps": row["Requests/s"],
        "p50_ms": row["50%"], "p95_ms": row["95%"], "p99_ms": row["99%"],
    }  # fmt: skip


def logs(report_dir: Path) -> list[str]:
    return [p.read_text(errors="replace") for p in sorted(report_dir.glob("locust*.log"))]


def verdicts(summary: Summary) -> list[str]:
    lines = []
    if not summary.cpu_valid:
        peak = f" (peak {summary.cpu_peak_percent:.0f} %)" if summary.cpu_peak_percent else ""
        lines.append(
            f"INVALID RUN: a Locust process went above {summary.cpu_limit_percent:.0f} % CPU{peak}, so its "
            "numbers are not trustworthy; add LOCUST_WORKERS or lower USERS"
        )
    if summary.threshold_violations:
        lines.append(f"THRESHOLD VIOLATED: {'; '.join(summary.threshold_violations)}")
    if summary.exit_code not in (0, THRESHOLD_EXIT_CODE):
        lines.append(f"LOCUST EXITED WITH {summary.exit_code}: see {summary.report_dir / 'locust.log'}")
    return lines


def mark_report(html: Path, summary: Summary) -> None:
    """Put the verdicts on top of Locust's HTML report, where a reader cannot miss them."""
    lines = verdicts(summary)
    if not lines or not html.is_file():
        return
    banner = "".join(
        f'<div style="background:#b91c1c;color:#fff;font:600 16px sans-serif;padding:12px 24px">{line}</div>'
        for line in lines
    )
    text = html.read_text()
    html.write_text(text.replace("<body>", f"<body>{banner}", 1))


def print_summary(summary: Summary) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, width=shutil.get_terminal_size((120, 24)).columns)
    title = f"{summary.scenario}{f' + {summary.shape}' if summary.shape else ''}: {summary.users} users, " + (
        f"{summary.run_time}, {summary.workers} workers" if summary.workers else summary.run_time
    )
    table = Table(title=title, title_justify="left")
    for column in ("type", "name", "requests", "fails", "rps", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("type", "name") else "right")
    for row in summary.rows:
        table.add_row(
            row["type"],
            escape(row["name"]),
            str(row["requests"]),
            str(row["failures"]),
            f"{row['rps']:.1f}",
            f"{row['p50_ms']:g}",
            f"{row['p95_ms']:g}",
            f"{row['p99_ms']:g}",
        )
    console.print(table)
    console.print(
        f"[bold]{summary.rps:.1f} req/s[/]  p50 {summary.p50_ms:g} ms  p95 {summary.p95_ms:g} ms  "
        f"p99 {summary.p99_ms:g} ms  failures {summary.failures}/{summary.requests} "
        f"({summary.fail_ratio:.2%})"
    )
    if summary.ws_rtt_p50_ms is not None:
        console.print(
            f"WebSocket round-trip p50 {summary.ws_rtt_p50_ms:g} ms  p95 {summary.ws_rtt_p95_ms:g} ms"
        )
    for error in summary.errors[:5]:
        text = f"{error['occurrences']} x {error['method']} {error['name']}: {error['error']}"
        console.print(escape(text), style="red")
    for line in verdicts(summary):
        console.print(f"[bold red]{line}[/]")
    if not verdicts(summary):
        console.print(f"[green]OK[/]: thresholds met, Locust CPU below {summary.cpu_limit_percent:g} %")
    console.print(f"report: {summary.report_dir / 'report.html'}")


def run_ui(
    host: str, workers: int, web_port: int, run_dir: Path = DEFAULT_RUN_DIR, out_dir: Path | None = None
) -> int:
    """The Locust web UI with a user-class and shape picker, until Ctrl-C (or TERM)."""
    host, ca = tls_target(check_host(host), run_dir)
    with trusting(ca):
        stack_info(host)
    started = our_stack(host, run_dir)
    try:
        runtime = started.runtime if started else stack.configured_runtime(run_dir)
    except ConfigError as error:
        raise LoadtestError(str(error)) from None
    if runtime == "docker":
        return run_ui_compose(run_dir, workers, web_port)
    env = {**locust_env(run_dir), **trust_env(ca)}
    report_dir = out_dir or REPORTS_DIR / f"{datetime.now():%Y%m%d-%H%M%S}-ui"
    report_dir.mkdir(parents=True, exist_ok=True)
    files = [str(SCENARIO_DIR), str(SHAPE_DIR)]
    options = [
        "-f", ",".join(files), "--class-picker", "-H", host,
        "--web-host", LOOPBACK, "--web-port", str(web_port),
        "--html", str(report_dir / "report.html"), "--summary-file", str(report_dir / "run.json"),
    ]  # fmt: skip
    processes = Processes()
    signal.signal(signal.SIGTERM, interrupt)
    try:
        master = start_locust(processes, files, options, workers, report_dir, env, expect_workers=False)
        print(
            f"Locust web UI: http://{LOOPBACK}:{web_port}  (target {host}, {workers} workers; Ctrl-C stops)\n"
            f"logs and the final report: {report_dir}",
            flush=True,
        )
        return master.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        processes.stop()


def run_ui_compose(run_dir: Path, workers: int, web_port: int) -> int:
    """Docker runtime: the compose profile `loadtest` (locust-master, N x locust-worker), foreground."""
    try:
        target = stack.locust_target(run_dir)
        print(
            f"Locust web UI: http://{LOOPBACK}:{web_port}  (target {target} on the compose network; "
            "compose profile loadtest; Ctrl-C stops)",
            flush=True,
        )
        stack.locust_web_ui(run_dir, workers, web_port)
    except KeyboardInterrupt:
        return 0
    except (ConfigError, stack.StackError) as error:
        raise LoadtestError(str(error)) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtest.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="mixed", help=f"{' | '.join(SCENARIOS)} or a locustfile path")
    parser.add_argument("--users", type=int, default=20, help="peak concurrent users (default 20)")
    parser.add_argument("--spawn-rate", type=float, default=5, help="users started per second (default 5)")
    parser.add_argument("--run-time", default="30s", help="duration: 30s, 5m, 1h30m (default 30s)")
    parser.add_argument("--host", default="", help="target URL (default: the running stack's)")
    parser.add_argument("--workers", type=int, default=None, help="Locust worker processes (LOCUST_WORKERS)")
    parser.add_argument("--shape", default="", help=f"load shape: {' | '.join(SHAPES)} (default none)")
    parser.add_argument("--no-thresholds", action="store_true", help="the exit code ignores the thresholds")
    parser.add_argument(
        "--out", type=Path, default=None, help="report directory (default reports/<time>-<scenario>)"
    )
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="the local stack's run dir")
    parser.add_argument("--ui", action="store_true", help="start the web UI instead of a headless run")
    parser.add_argument("--web-port", type=int, default=None, help="web UI port (LOCUST_WEB_PORT)")
    args = parser.parse_args(argv)
    # A shell starts background jobs with SIGINT ignored, and Locust children would inherit that; with a
    # handler installed here they get the default back at exec, so SIGINT stops them with a report.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        host = args.host or default_host(args.run_dir.resolve())
        workers = args.workers if args.workers is not None else locust_setting("LOCUST_WORKERS", args.run_dir)
        if args.ui:
            web_port = args.web_port or locust_setting("LOCUST_WEB_PORT", args.run_dir)
            return run_ui(host, workers, web_port, args.run_dir, args.out)
        summary = run_headless(
            host,
            args.scenario,
            args.users,
            args.spawn_rate,
            args.run_time,
            out_dir=args.out,
            workers=workers,
            shape=args.shape or None,
            thresholds=not args.no_thresholds,
            run_dir=args.run_dir.resolve(),
        )
    except LoadtestError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
