"""The command line of `make sweep` (`python -m loadtest.sweep`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from deploy.stackctl.config import ROOT
from deploy.stackctl.envargs import EnvParser
from loadtest.errors import LoadtestError
from loadtest.sweep.plan import Load, SweepError, parse_sweep
from loadtest.sweep.report import Bounds
from loadtest.sweep.run import run_sweep


def parser(environ: Mapping[str, str] | None = None) -> EnvParser:
    """Each option bound to its variable (`make sweep SWEEP=... USERS=50`); `environ`: where they are read."""
    p = EnvParser(
        prog="sweep",
        description="Measure a scenario once per combination of knob values.",
        tool="sweep",
        error=SweepError,
        environ=environ,
    )
    p.add_argument("--sweep", env="SWEEP")
    p.add_argument("--scenario", env="SCENARIO")
    p.add_argument("--users", env="USERS")
    p.add_argument("--spawn-rate", env="SPAWN_RATE")
    p.add_argument("--run-time", env="RUN_TIME")
    p.add_argument("--workers", env="LOCUST_WORKERS")
    p.add_argument("--max-fail-ratio", env="SWEEP_MAX_FAIL_RATIO")
    p.add_argument("--max-p95-ms", env="SWEEP_MAX_P95_MS")
    p.add_argument("--out-root", type=Path, default=ROOT / "reports")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        axes = parse_sweep(args.sweep)
        load = Load(args.scenario, args.users, args.spawn_rate or args.users, args.run_time, args.workers)
        bounds = Bounds(args.max_fail_ratio, args.max_p95_ms)
        report_dir, _, recommendation = run_sweep(axes, load, args.out_root, bounds)
    except LoadtestError as error:
        print(f"make sweep: {error}", file=sys.stderr)
        return 2
    print(recommendation)
    print(f"report: {report_dir / 'index.html'}  (results.csv beside it)")
    return 0
