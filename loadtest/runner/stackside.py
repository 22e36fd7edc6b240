"""The stack's side of a run: the sampler beside Locust when HOST is the stack of the run dir (any
runtime), and its charts at the end of report.html with the knobs the stack runs with."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.stackctl import stack
from loadtest.runner.trust import our_stack
from loadtest.sampler import charts
from loadtest.sampler.sampler import SERIES_FILE, Sampler, beside, read_series

NOT_SAMPLED = (
    "No stack charts: HOST={host} is not the stack started in {run_dir}, so the sampler does not know "
    "where its workers and nginx are. Run against `make up`'s stack, or pass its run dir."
)


def handle_for(host: str, run_dir: Path) -> stack.Handle | None:
    return stack.attach(run_dir) if our_stack(host, run_dir) is not None else None


@contextlib.contextmanager
def sampling(host: str, run_dir: Path, report_dir: Path) -> Iterator[Sampler | None]:
    with beside(handle_for(host, run_dir), report_dir / SERIES_FILE) as sampler:
        yield sampler


def locust_history(report_dir: Path) -> list[tuple[float, float, float]]:
    """Locust's own requests/s and failures/s per second (locust_stats_history.csv, all rows together)."""
    path = report_dir / "locust_stats_history.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        return [
            (float(row["Timestamp"]), float(row["Requests/s"]), float(row["Failures/s"]))
            for row in csv.DictReader(handle)
            if row.get("Name") == "Aggregated" and row.get("Requests/s") not in (None, "", "N/A")
        ]


def knobs(report_dir: Path) -> dict[str, Any]:
    try:
        settings = json.loads((report_dir / "stack-settings.json").read_text()).get("settings") or {}
    except (OSError, ValueError):
        return {}
    return dict(settings) if isinstance(settings, dict) else {}


def write_stack_page(html: Path, report_dir: Path, host: str, run_dir: Path) -> None:
    """The stack's charts on a page of their own, where Locust wrote no report here (its compose UI)."""
    html.write_text(
        '<!doctype html><html><head><meta charset="utf-8"><title>stack</title></head><body></body></html>'
    )
    add_stack_charts(html, report_dir, host, run_dir)


def add_stack_charts(html: Path, report_dir: Path, host: str, run_dir: Path) -> None:
    """The stack's charts (or why there are none) and its knobs at the end of Locust's report.html."""
    if not html.is_file():
        return
    samples = read_series(report_dir / SERIES_FILE)
    settings = knobs(report_dir)
    table = charts.knobs_table(settings)
    if samples:
        specs = charts.specs(samples, client=locust_history(report_dir))
        block = charts.section(specs, "The stack's side: workers, event loops, nginx", extra=table)
    else:
        note = NOT_SAMPLED.format(host=host, run_dir=run_dir)
        block = charts.section(charts.specs([]), "The stack's side", note=note, extra=table)
    html.write_text(charts.embed(html.read_text(), block))
