"""The command line of `make sweep` (`python -m loadtest.sweep`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.stackctl.config import ROOT
from loadtest.errors import LoadtestError
from loadtest.sweep.plan import Load, parse_sweep
from loadtest.sweep.report import Bounds
from loadtest.sweep.run import run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sweep", description="Measure a scenario once per combination of knob values."
    )
    parser.add_argument("--sweep", default="", help="'KNOB=v1,v2 KNOB2=a,b' (env names, docs/SETTINGS.md)")
    parser.add_argument("--scenario", default="http")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=0, help="users started per second (0 = all)")
    parser.add_argument("--run-time", default="15s", help="per combination, Locust syntax (20s, 1m)")
    parser.add_argument("--workers", type=int, default=0, help="Locust worker processes (0 = one process)")
    parser.add_argument("--max-fail-ratio", type=float, default=Bounds.max_fail_ratio)
    parser.add_argument(
        "--max-p95-ms", type=float, default=Bounds.max_p95_ms, help="p95 bound (0 = 2 x the best p95)"
    )
    parser.add_argument("--out-root", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    try:
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
