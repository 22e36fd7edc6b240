"""What `make drill` shows and writes: one rich table, drill.json (every row, every count), index.html (the
table with each row's mechanism, the machine, the load parameters, and each drill's timeline from its stack
series) and servers.md (every server's losses, WebSocket closes and recovery side by side, and the
mechanisms)."""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from loadtest.drill.load import WRK_TIMEOUT_S
from loadtest.drill.plan import FLOOR_RATE, Row
from loadtest.host import load_average
from loadtest.host import machine as host_machine
from loadtest.sampler import charts
from loadtest.sampler.sampler import SERIES_FILE, read_series
from loadtest.status import Status

HEAD = (
    "drill",
    "server",
    "runtime",
    "sent",
    "req/s",
    "p99",
    "failures",
    "WS closes",
    "failed reconnects",
    "rooms",
    "recovery",
    "allowed",
    "result",
)

STYLES = {Status.PASSED: "green", Status.FAILED: "bold red", Status.ERROR: "red"}

LEGEND = {
    "POST 502, GET 504, ...": "an answer outside 2xx, by method (nginx's JSON 502: the app closed or refused "
    "the connection the request was on)",
    "read": "wrk wrote the request, then the connection ended before an answer: a keep-alive connection "
    "the server closed just as the request arrived (nginx's old workers close idle client connections on a "
    "reload or stop; clients that retry a request on a reused connection do not see this), or an answer cut "
    "off by a dying process",
    "write": "wrk could not write the request: the connection was refused or reset",
    "connect": "wrk could not open a connection",
    "timeout": f"no answer within {WRK_TIMEOUT_S} s",
    "not counted": "a failure the event causes by design (after a stop nothing listens)",
    "drill's own": "requests the drill sends itself (the blocking one, the slow ones in flight at a stop)",
    "WS closes": "close codes the server sent (1012: restart, 1001: going away; 1006: no close frame, the "
    "worker died); every client reconnects at once",
    "failed reconnects": "WebSocket connects that failed (handshake status or socket error); must be 0",
    "wrong WS echoes": "answers on a WebSocket that were not the message its client sent (each client sends "
    "one every 0.5 s and expects it back, in order); must be 0",
    "allowed": "what the event may lose: nothing, or for a killed worker or container or a lost swarm node "
    "the requests in flight on it, bounded by the connections it held (each carries at most one request) "
    "and by wrk's connections",
    "recovery (timeline)": "node-loss: seconds after the node went until the manager marked it down, until "
    "the app ran its tasks elsewhere, and when nginx last sent a request to a lost task (its access log, "
    "± 1 s)",
    "rooms": "room members (WS /ws/rooms/{room}) and a publisher per room (POST): messages accepted (202), "
    "deliveries, missing (an accepted message a member never got: must be 0, or what `allowed` says), "
    "duplicates (counted), publish-to-receive p50/p99, the closes members got (1011: Redis down, 1012: "
    "restart, 1013: queue full, 1006: connection lost); each member resumes with `after`",
    "server": "what runs the app behind the same nginx (SERVER; deploy/stackctl/servers.py)",
    "mechanism": "how that server carries out the event; `no such event`: it has none, the drill did not run",
}
DONE = (Status.PASSED, Status.SKIPPED, Status.NO_SUCH_EVENT)  # a run whose rows are all these passed


def machine() -> dict[str, str]:
    return {
        **host_machine(),
        "load_average_at_start": load_average(),
        "note": "wrk and the WebSocket clients run on the same machine as the stack",
        "cores": str(os.cpu_count()),
    }


def counts(found: dict[str, int], not_counted: list[str] | None = None) -> str:
    if not found:
        return "0"
    skipped = set(not_counted or ())
    return ", ".join(
        f"{kind}: {n}" + (" (not counted)" if kind in skipped else "") for kind, n in found.items()
    )


def rooms_cell(row: Row) -> str:
    rooms = row.rooms
    if not rooms:
        return "-"
    allowed = f" (allowed {row.rooms_allowed})" if row.rooms_allowed else ""
    refused = f", refused {counts(rooms['refused'])}" if rooms["refused"] else ""
    fatal = f", gave up: {'; '.join(rooms['fatal'])}" if rooms["fatal"] else ""
    return (
        f"{rooms['published']} published{refused}, {rooms['delivered']} delivered to {rooms['members']}, "
        f"missing {rooms['missing']}{allowed}, duplicates {rooms['duplicates']}, p50/p99 "
        f"{rooms['latency_p50_ms']}/{rooms['latency_p99_ms']} ms, closes {counts(rooms['closes'])}{fatal}"
    )


def result(row: Row) -> str:
    if not row.status.ran:
        return f"{row.status}: {row.reason}"
    reconnects = f", {row.ws_failed_reconnects} failed WS reconnects" if row.ws_failed_reconnects else ""
    wrong = f", {row.ws_wrong_echoes} wrong WS echoes" if row.ws_wrong_echoes else ""
    missed = f", {row.rooms_lost} room messages missed" if row.rooms_lost else ""
    text = f"{row.status} (lost {row.lost}{reconnects}{wrong}{missed})"
    if row.weak:
        text += f"; load {row.rate:.0f} req/s < {FLOOR_RATE:.0f}: weak evidence"
    return text


def cells(row: Row) -> list[str]:
    if not row.status.ran:
        return [row.drill, row.server, row.runtime, *[""] * (len(HEAD) - 4), result(row)]
    failures = counts(row.failures, row.not_counted)
    if row.probes:
        failures += "; drill's own: " + counts(row.probes)
    recovery = "-" if row.recovery_s is None else f"{row.recovery_s:.2f} s"
    if row.timeline:
        recovery += " (" + ", ".join(f"{what} {s:g} s" for what, s in row.timeline.items()) + ")"
    failed = counts(row.ws_failed_by_reason) if row.ws_failed_reconnects else "0"
    return [
        row.drill,
        row.server,
        row.runtime,
        str(row.requests),
        f"{row.rate:.0f}",
        f"{row.latency_ms.get('p99', 0):.0f} ms",
        failures,
        counts(row.ws_closes),
        failed,
        rooms_cell(row),
        recovery,
        row.allowance + ("" if row.rooms_allowance == "nothing" else f"; rooms: {row.rooms_allowance}"),
        result(row),
    ]


def table(rows: list[Row]) -> Table:
    grid = Table(title="make drill: what each worker-lifecycle event lost under load", show_lines=True)
    for name in HEAD:
        grid.add_column(name, overflow="fold")
    for row in rows:
        grid.add_row(*cells(row), style=STYLES.get(row.status, "yellow"))
    return grid


def jsonable(value: Any) -> Any:
    if isinstance(value, Row):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


TIMELINE_NOTE = (
    "Each drill's stack, sampled once a second (loadtest/sampler): requests/s and failures/s through nginx "
    "(its access log: answers outside 2xx/3xx; wrk's socket errors are in the row only), the drill's "
    "WebSocket closes by code, workers alive and each worker's event-loop lag. Blue dashed: the event; "
    "green: a worker started; red: a worker ended, with the reason the gunicorn master recorded."
)


def timelines(report_dir: Path, rows: list[Row]) -> str:
    """One timeline per drill and server that has a stack series (stack-series.jsonl and timeline.json in
    its dir, <server>/<drill>)."""
    parts = []
    for row in rows:
        drill_dir = report_dir / row.server / row.drill
        samples = read_series(drill_dir / SERIES_FILE)
        if not samples:
            continue
        try:
            marks = json.loads((drill_dir / "timeline.json").read_text())
        except (OSError, ValueError):
            marks = {}
        specs = charts.timeline_specs(
            samples,
            closes=[(t, str(code)) for t, code in marks.get("closes", [])],
            events=[(t, str(label)) for t, label in marks.get("events", [])],
        )
        name = html.escape(f"{row.drill} on {row.server}")
        parts.append(f'<h3 id="timeline-{html.escape(row.server)}-{html.escape(row.drill)}">{name}</h3>')
        parts.append(charts.charts_div(specs, f"charts-{row.server}-{row.drill}"))
    if not parts:
        return ""
    return (
        f'<section class="stack-section"><style>{charts.STYLE}</style><h2>Timelines</h2>'
        f'<p class="stack-note">{html.escape(TIMELINE_NOTE)}</p>{"".join(parts)}'
        f"<script>{charts.RENDERER}</script></section>"
    )


def write_html(path: Path, rows: list[Row], meta: dict[str, Any], timeline: str = "") -> None:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in (*HEAD, "mechanism", "notes"))
    body = []
    for row in rows:
        notes = "; ".join(row.notes)
        values = "".join(f"<td>{html.escape(c)}</td>" for c in (*cells(row), row.mechanism, notes))
        body.append(f'<tr class="{css_class(row.status)}">{values}</tr>')
    legend = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in LEGEND.items())
    about = "".join(
        f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in meta.items() if k != "params"
    )
    path.write_text(
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>drill {html.escape(str(meta.get("started", "")))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }}
tr.passed {{ background: #eef6ee; }} tr.failed {{ background: #fbeaea; }} tr.error {{ color: #a33; }}
tr.skipped, tr.no-such-event {{ color: #777; }}
</style></head><body>
<h1>make drill: nothing lost under load?</h1>
<ul>{about}</ul>
<table><tr>{head}</tr>
{chr(10).join(body)}
</table>
<h2>How to read it</h2>
<dl>{legend}</dl>
<p>Every row's counts (statuses per method, latency, WebSocket reconnect gaps, knobs) are in drill.json.</p>
{timeline}
</body></html>
"""
    )


def css_class(status: Status) -> str:
    return status.value.replace(" ", "-")


def side_by_side(row: Row) -> str:
    """One server's outcome of one drill, in a cell: lost (and what it may lose), WebSocket closes,
    recovery; or why it did not run."""
    if not row.status.ran:
        return str(row.status) if row.status == Status.NO_SUCH_EVENT else f"{row.status}: {row.reason}"
    mark = "✔" if row.status == Status.PASSED else "✘"
    lost = f"{mark} lost {row.lost}" + (f" (≤ {row.allowed} allowed)" if row.allowed else "")
    if row.failures:
        lost += f": {counts(row.failures, row.not_counted)}"
    if row.probe_failures:
        lost += f"; drill's own failed: {row.probe_failures}"
    recovery = "" if row.recovery_s is None else f"; recovery {row.recovery_s:.2f} s"
    reconnects = f"; {row.ws_failed_reconnects} failed WS reconnects" if row.ws_failed_reconnects else ""
    missed = f"; room messages missed {row.rooms_lost}" if row.rooms_lost else ""
    return f"{lost}; WS closes {counts(row.ws_closes)}{reconnects}{missed}{recovery}"


def servers_markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """Every server's outcome of every drill, one column per server; then each row's mechanism."""
    names = list(dict.fromkeys(row.server for row in rows))
    drills = list(dict.fromkeys(row.drill for row in rows))
    outcome = {(row.drill, row.server): row for row in rows}
    lines = [
        f"# make drill — {meta.get('started', '')}: the servers side by side",
        "",
        f"Load: {meta.get('load', '')}. Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, "
        f"load average {meta.get('load_average_at_start', '?')} at the start, "
        f"{meta.get('load_average_at_end', '?')} at the end.",
        "",
        "| drill | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for drill in drills:
        cells = [side_by_side(outcome[drill, name]) if (drill, name) in outcome else "" for name in names]
        lines.append(f"| {drill} | " + " | ".join(cells) + " |")
    lines += ["", "## Mechanisms", "", "| drill | server | mechanism |", "|---|---|---|"]
    lines += [f"| {row.drill} | {row.server} | {row.mechanism} |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(report_dir: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    passed = all(r.status in DONE for r in rows)
    summary = {**meta, "passed": passed, "legend": LEGEND, "rows": rows}
    (report_dir / "drill.json").write_text(json.dumps(summary, indent=2, default=jsonable))
    write_html(report_dir / "index.html", rows, meta, timelines(report_dir, rows))
    (report_dir / "servers.md").write_text(servers_markdown(rows, meta))
