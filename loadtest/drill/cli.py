"""The command line of `make drill` (`python -m loadtest.drill`).

Exit codes: 0 every drill lost at most what it may (or was skipped); 3 (loadtest/limits.py) a drill lost
more; 1 a drill could not run (its row says why); 2 bad input or no wrk, in one line, nothing started.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from deploy.stackctl.config import ROOT
from loadtest.drill.drills import NAMES
from loadtest.drill.plan import DrillError, Row, parse_drills, parse_load
from loadtest.drill.report import HEAD, cells, table
from loadtest.drill.run import run_drills
from loadtest.limits import THRESHOLD_EXIT_CODE
from loadtest.status import Status

BAD_INPUT = 2
COULD_NOT_RUN = 1


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise DrillError(message)


def parser() -> Parser:
    p = Parser(prog="drill", description="Worker-lifecycle drills under load: what each event lost.")
    p.add_argument("--drill", default="", help=f"one of {', '.join(NAMES)}, several (a,b) or all (default)")
    p.add_argument("--seconds", help="DRILL_SECONDS: load per drill (15; short: 4)")
    p.add_argument("--threads", help="WRK_THREADS (1)")
    p.add_argument("--connections", help="WRK_CONNECTIONS (32)")
    p.add_argument("--websockets", help="DRILL_WEBSOCKETS: held /ws/ticker clients (20; short: 6)")
    p.add_argument("--rate", help="DRILL_RATE: cap in requests/s (0 = as fast as wrk goes)")
    p.add_argument("--short", action="store_true", help="DRILL_SHORT=1: seconds-long drills, for tests")
    p.add_argument("--strict", action="store_true", help="DRILL_STRICT=1: no drill may lose anything")
    p.add_argument("--out-root", type=Path, default=ROOT / "reports")
    return p


def exit_code(rows: list[Row]) -> int:
    if any(r.status == Status.FAILED for r in rows):
        return THRESHOLD_EXIT_CODE
    return COULD_NOT_RUN if any(r.status == Status.ERROR for r in rows) else 0


def main(argv: list[str] | None = None, base: Mapping[str, str] | None = None) -> int:
    """`base`: the environment the stacks' knobs come from (default: this process's and `.env`)."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        args = parser().parse_args(argv)
        raw = {
            name: getattr(args, name) for name in ("seconds", "threads", "connections", "websockets", "rate")
        }
        names = parse_drills(args.drill, NAMES)
        params = parse_load(raw, short=args.short, strict=args.strict)

        def progress(row: Row) -> None:
            line = dict(zip(HEAD, cells(row), strict=True))
            done = f"{row.drill}: {line['result']}"
            if row.status.ran:
                done += f" — sent {line['sent']}, {line['req/s']} req/s, failures {line['failures']}"
            err.print(done)

        err.print(f"make drill: {', '.join(names)}; {params.describe()}")
        report_dir, rows = run_drills(names, params, args.out_root, base, progress)
    except DrillError as error:
        print(f"make drill: {error}", file=sys.stderr)
        return BAD_INPUT
    Console(width=max(Console().width, 160)).print(table(rows))
    print(f"report: {report_dir / 'index.html'}  (drill.json beside it)")
    return exit_code(rows)
