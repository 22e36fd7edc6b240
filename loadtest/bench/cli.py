"""The command line of `make bench` (`python -m loadtest.bench`).

Exit codes: 0 every row ran (or was skipped: this machine lacks what it needs, its row says why); 1 a row
could not run (error, its row says why); 2 bad input or no wrk, in one line, nothing started.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from deploy.stackctl.config import ROOT
from deploy.stackctl.envargs import EnvParser, checked
from loadtest.bench.report import markdown
from loadtest.bench.rows import NAMES, BenchError, Params, Row, RowSpec, parse_params, parse_rows
from loadtest.bench.run import run_bench
from loadtest.errors import LoadtestError
from loadtest.status import Status

BAD_INPUT = 2
COULD_NOT_RUN = 1


INPUTS = {"seconds": "BENCH_SECONDS", "connections": "BENCH_CONNECTIONS", "slow_n": "BENCH_SLOW_N"}
INPUTS |= {"slow_delay": "BENCH_SLOW_DELAY", "ws_n": "BENCH_WS_N", "ws_hold": "BENCH_WS_HOLD"}
INPUTS |= {"rooms_n": "BENCH_ROOMS_N", "rooms_rate": "BENCH_ROOMS_RATE"}
INPUTS |= {"path": "BENCH_PATH"}


def parser(environ: Mapping[str, str] | None = None) -> EnvParser:
    """Each option bound to its variable (`make bench BENCH_SECONDS=30`); `environ`: where they are read."""
    p = EnvParser(
        prog="bench",
        description="The hot path beside a bare app, nginx and other servers.",
        tool="bench",
        error=BenchError,
        environ=environ,
    )
    p.add_argument("--bench", env="BENCH", help=f"Rows: {', '.join(NAMES)}.")
    for name, env in INPUTS.items():
        # None: the default of the mode (--short)
        p.add_argument(f"--{name.replace('_', '-')}", env=env, default=None)
    p.add_argument("--short", action="store_true", env="BENCH_SHORT")
    workers = "workers of every server (default: the blueprint's WEB_CONCURRENCY)"
    p.add_argument("--workers", type=checked("WEB_CONCURRENCY"), help=workers)
    p.add_argument("--profile", help="the blueprint's tuning profile (default: its PROFILE)")
    p.add_argument("--out-root", type=Path, default=ROOT / "reports")
    return p


def inputs(args: Namespace) -> tuple[list[RowSpec], Params]:
    """The rows and the inputs of the run, from the parsed options."""
    given = {key: getattr(args, key) for key in (*INPUTS, "workers", "profile")}
    return parse_rows(args.bench), parse_params(given, short=args.short)


def exit_code(rows: list[Row]) -> int:
    return COULD_NOT_RUN if any(row.status == Status.ERROR for row in rows) else 0


def main(argv: list[str] | None = None, base: Mapping[str, str] | None = None) -> int:
    """`base`: the environment the blueprint's knobs come from (default: this process's and `.env`)."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        args = parser().parse_args(argv)
        specs, params = inputs(args)

        def progress(row: Row) -> None:
            err.print(f"{row.spec.name}: {row.status} {summary(row)}".rstrip())

        report_dir, rows, meta = run_bench(specs, params, args.out_root, base, err, progress)
    except LoadtestError as error:
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
    if row.spec.kind == "rooms":
        return (
            f"{v['connected']}/{v['n']} members, {v['deliveries_per_s']:,.0f} deliveries/s at "
            f"{v['rate']:g} msg/s, p99 {v['p99_ms']} ms, {v['missing']} missing; largest fan-out within "
            f"250 ms: {v['largest_fanout_per_s']} deliveries/s"
        )
    cpu = " (wrk CPU-bound)" if v.get("generator_cpu_bound") else ""
    return f"{v['rps']:,.0f} req/s, p99 {v['p99_ms']:.1f} ms, {v['errors']} errors{cpu}"
