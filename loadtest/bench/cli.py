"""The command line of `make bench` (`python -m loadtest.bench`).

Exit codes: 0 every row ran (or was skipped: this machine lacks what it needs, its row says why); 1 a row
could not run (error, its row says why); 2 bad input or no wrk, in one line, nothing started.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from deploy.stackctl.config import ROOT
from loadtest.bench.report import markdown
from loadtest.bench.rows import NAMES, BenchError, Row, parse_params, parse_rows
from loadtest.bench.run import run_bench
from loadtest.status import Status

BAD_INPUT = 2
COULD_NOT_RUN = 1


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BenchError(message)


def parser() -> Parser:
    p = Parser(prog="bench", description="The hot path beside a bare app, nginx and other servers.")
    p.add_argument("--bench", default="", help=f"BENCH: one of {', '.join(NAMES)}, several (a,b) or all")
    p.add_argument("--seconds", help="BENCH_SECONDS: wrk time per row (10; short: 2)")
    p.add_argument("--connections", help="BENCH_CONNECTIONS: wrk connections of the throughput rows (64)")
    p.add_argument("--workers", help="WEB_CONCURRENCY: workers of every server (default: the blueprint's)")
    p.add_argument("--slow-n", help="BENCH_SLOW_N: /api/slow requests held at once (1000; short: 50)")
    p.add_argument("--slow-delay", help="BENCH_SLOW_DELAY: their delay in s (5; short: 0.5)")
    p.add_argument("--ws-n", help="BENCH_WS_N: WebSockets held (1000; short: 50)")
    p.add_argument("--ws-hold", help="BENCH_WS_HOLD: seconds they are held (0: BENCH_SECONDS)")
    p.add_argument("--profile", help="PROFILE: the blueprint's tuning profile (deploy/profiles/)")
    p.add_argument("--short", action="store_true", help="BENCH_SHORT=1: 2 s rows and small N, for tests")
    p.add_argument("--out-root", type=Path, default=ROOT / "reports")
    return p


def exit_code(rows: list[Row]) -> int:
    return COULD_NOT_RUN if any(row.status == Status.ERROR for row in rows) else 0


def main(argv: list[str] | None = None, base: Mapping[str, str] | None = None) -> int:
    """`base`: the environment the blueprint's knobs come from (default: this process's and `.env`)."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        args = parser().parse_args(argv)
        specs = parse_rows(args.bench)
        keys = ("seconds", "connections", "workers", "slow_n", "slow_delay", "ws_n", "ws_hold", "profile")
        params = parse_params({key: getattr(args, key) for key in keys}, short=args.short)

        def progress(row: Row) -> None:
            err.print(f"{row.spec.name}: {row.status} {summary(row)}".rstrip())

        report_dir, rows, meta = run_bench(specs, params, args.out_root, base, err, progress)
    except BenchError as error:
        print(f"make bench: {error}", file=sys.stderr)
        return BAD_INPUT
    print(markdown(rows, meta))
    print(f"report: {report_dir / 'bench.md'}  (bench.json and bench.png beside it)")
    return exit_code(rows)


def summary(row: Row) -> str:
    v = row.values
    if row.status != Status.OK:
        return f"— {row.note}"
    if row.spec.kind == "websocket":
        return f"{v['connected']}/{v['n']} held, {v['drops']} dropped, {v['rss_kib_per_ws']} KiB each"
    cpu = " (wrk CPU-bound)" if v.get("generator_cpu_bound") else ""
    return f"{v['rps']:,.0f} req/s, p99 {v['p99_ms']:.1f} ms, {v['errors']} errors{cpu}"
