"""What the bench's side experiments (hop.py, sampled.py) share: their report files and their command line's
ending (exit 2 with one line on bad input, else the page and where it is)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.stackctl.envargs import EnvParser
from deploy.stackctl.errors import StackError
from loadtest.bench.cli import BAD_INPUT
from loadtest.errors import LoadtestError
from loadtest.host import load_average


def write_report(
    report_dir: Path,
    name: str,
    meta: dict[str, Any],
    summary: Any,
    rounds: list[Any],
    page: Callable[[Any, dict[str, Any]], str],
) -> None:
    """<name>.json (the run, its summary and every measurement) and <name>.md, once the run has ended."""
    meta["load_average_after"] = load_average()
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    (report_dir / f"{name}.json").write_text(
        json.dumps({**meta, "summary": summary, "rounds": rounds}, indent=2)
    )
    (report_dir / f"{name}.md").write_text(page(summary, meta))


def main(
    name: str,
    parser: Callable[[], EnvParser],
    run: Callable[[argparse.Namespace], Path],
    argv: list[str] | None,
) -> int:
    try:
        report_dir = run(parser().parse_args(argv))
    except (LoadtestError, StackError) as error:
        print(f"{name}: {error}", file=sys.stderr)
        return BAD_INPUT
    print((report_dir / f"{name}.md").read_text())
    print(f"report: {report_dir / f'{name}.md'}")
    return 0
