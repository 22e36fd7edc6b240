"""The command line of `make drill` (`python -m loadtest.drill`).

Exit codes: 0 every drill lost at most what it may (or was skipped); 3 (loadtest/limits.py) a drill lost
more; 1 a drill could not run (its row says why); 2 bad input or no wrk, in one line, nothing started.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from deploy.stackctl import servers
from deploy.stackctl.config import ROOT
from deploy.stackctl.envargs import EnvParser
from loadtest.drill.drills import NAMES
from loadtest.drill.plan import (
    DrillError,
    LoadParams,
    NodeCommands,
    Row,
    parse_drills,
    parse_load,
    parse_servers,
)
from loadtest.drill.report import HEAD, cells, table
from loadtest.drill.run import run_drills
from loadtest.errors import LoadtestError
from loadtest.limits import THRESHOLD_EXIT_CODE
from loadtest.status import Status

BAD_INPUT = 2
COULD_NOT_RUN = 1


LOAD = {"seconds": "DRILL_SECONDS", "threads": "WRK_THREADS", "connections": "WRK_CONNECTIONS"}
LOAD |= {"websockets": "DRILL_WEBSOCKETS", "rate": "DRILL_RATE"}
LOAD |= {"room_members": "DRILL_ROOM_MEMBERS", "room_rate": "DRILL_ROOM_RATE"}
# What the load sends: the demo's routes by default, your app's (APP_MODULE) when you name them.
TARGETS = {"post": "DRILL_POST", "body": "DRILL_BODY", "get": "DRILL_GET", "ws_path": "DRILL_WS"}
MAY_BE_EMPTY = ("DRILL_GET", "DRILL_WS")  # DRILL_WS= : no WebSockets


def parser(environ: Mapping[str, str] | None = None) -> EnvParser:
    """Each option bound to its variable (`make drill DRILL_SECONDS=30`); `environ`: where they are read."""
    p = EnvParser(
        prog="drill",
        description="Worker-lifecycle drills under load: what each event lost.",
        tool="drill",
        error=DrillError,
        environ=environ,
    )
    p.add_argument("--drill", env="DRILL", help=f"Drills: {', '.join(NAMES)}.")
    p.add_argument("--server", env="SERVER", help=f"Servers: {', '.join(servers.NAMES)}.")
    for option, env in LOAD.items():
        p.add_argument(f"--{option.replace('_', '-')}", env=env, default=None)  # None: the mode's default
    for option, env in TARGETS.items():
        p.add_argument(f"--{option.replace('_', '-')}", env=env, empty_is_value=env in MAY_BE_EMPTY)
    p.add_argument("--node-down", env="DRILL_NODE_DOWN")
    p.add_argument("--node-up", env="DRILL_NODE_UP")
    p.add_argument("--short", action="store_true", env="DRILL_SHORT")
    p.add_argument("--strict", action="store_true", env="DRILL_STRICT")
    p.add_argument("--out-root", type=Path, default=ROOT / "reports")
    return p


def inputs(args: Namespace) -> tuple[list[str], list[str], LoadParams]:
    """The drills, the servers and the load, from the parsed options."""
    names, server_names = parse_drills(args.drill, NAMES), parse_servers(args.server)
    given = {name: getattr(args, name) for name in (*LOAD, *TARGETS)}
    return names, server_names, parse_load(given, args.short, args.strict)


def exit_code(rows: list[Row]) -> int:
    if any(r.status == Status.FAILED for r in rows):
        return THRESHOLD_EXIT_CODE
    return COULD_NOT_RUN if any(r.status == Status.ERROR for r in rows) else 0


def main(argv: list[str] | None = None, base: Mapping[str, str] | None = None) -> int:
    """`base`: the environment the stacks' knobs come from (default: this process's and `.env`)."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        args = parser().parse_args(argv)
        names, server_names, params = inputs(args)

        def progress(row: Row) -> None:
            line = dict(zip(HEAD, cells(row), strict=True))
            done = f"{row.drill}: {line['result']}"
            if server_names != [servers.DEFAULT]:
                done = f"{row.server} {done}"
            if row.status.ran:
                done += f" — sent {line['sent']}, {line['req/s']} req/s, failures {line['failures']}"
            err.print(done)

        err.print(f"make drill: {', '.join(names)} on {', '.join(server_names)}; {params.describe()}")
        commands = NodeCommands(args.node_down, args.node_up)
        report_dir, rows = run_drills(names, params, args.out_root, base, progress, commands, server_names)
    except LoadtestError as error:
        print(f"make drill: {error}", file=sys.stderr)
        return BAD_INPUT
    Console(width=max(Console().width, 160)).print(table(rows))
    print(f"report: {report_dir / 'index.html'}  (drill.json and servers.md beside it)")
    return exit_code(rows)
