"""What a run writes beside Locust's own files and prints: the settings the stack runs with, the verdicts
on top of report.html, and the console table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from loadtest.runner.summary import Summary, verdicts
from loadtest.runner.trust import our_stack


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
