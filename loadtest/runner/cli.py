"""Run Locust against the stack and summarise the run: the Python API and CLI behind `make loadtest`.

The command line of `make loadtest` and `make loadtest-ui` (`python -m loadtest.runner`). Exit codes: 0
thresholds met; 3 (loadtest/limits.py) a threshold violated; 2 bad input or an unreachable host, in one
line, nothing started; anything else is Locust's own.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from deploy.stackctl.envargs import EnvParser
from loadtest.errors import LoadtestError
from loadtest.runner.plan import SCENARIOS
from loadtest.runner.processes import locust_setting
from loadtest.runner.report import print_summary
from loadtest.runner.run import run_headless
from loadtest.runner.ui import run_ui
from loadtest.stack import DEFAULT_RUN_DIR, default_host


def main(argv: list[str] | None = None) -> int:
    parser = EnvParser(prog="loadtest.runner", description=__doc__.split("\n\n")[0], tool="loadtest")
    parser.add_argument("--scenario", env="SCENARIO", help=f"Scenarios: {', '.join(SCENARIOS)}.")
    parser.add_argument("--users", env="USERS")
    parser.add_argument("--spawn-rate", env="SPAWN_RATE")
    parser.add_argument("--run-time", env="RUN_TIME")
    parser.add_argument("--host", env="HOST")
    parser.add_argument("--workers", type=int, default=None, help="Locust worker processes (LOCUST_WORKERS)")
    parser.add_argument("--shape", env="SHAPE")
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
