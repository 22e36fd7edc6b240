"""What a run measured, read from the summary the Locust side writes (run.json; Locust's CSV when there is
none), and the verdicts a reader must not miss."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.limits import CPU_LIMIT, THRESHOLD_EXIT_CODE

WS_RTT_ROW = ("WS", "/ws/echo round-trip")
CPU_WARNINGS = ("CPU usage above", "exceeded cpu threshold", "CPU usage was too high")


@dataclass
class Summary:
    report_dir: Path
    exit_code: int
    scenario: str
    host: str
    users: int
    spawn_rate: float
    run_time: str
    workers: int = 0
    shape: str | None = None
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    failures: int = 0
    fail_ratio: float = 0.0
    ws_rtt_p50_ms: float | None = None
    ws_rtt_p95_ms: float | None = None
    cpu_valid: bool = True
    cpu_peak_percent: float | None = None
    cpu_limit_percent: float = CPU_LIMIT
    threshold_violations: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["report_dir"] = str(self.report_dir)
        return data

    def row(self, request_type: str, name: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if (r["type"], r["name"]) == (request_type, name)), None)


def summarise(report_dir: Path, exit_code: int, **run: Any) -> Summary:
    summary = Summary(report_dir=report_dir, exit_code=exit_code, **run)
    try:
        data = json.loads((report_dir / "run.json").read_text())
    except (OSError, ValueError):
        data = None
    if data is not None:
        total = data["total"]
        summary.rows, summary.errors = data["rows"], data["errors"]
        summary.threshold_violations = data["thresholds"]["violations"]
        summary.cpu_peak_percent = data["cpu"]["peak_percent"]
        summary.cpu_limit_percent = data["cpu"]["limit_percent"]
        summary.cpu_valid = bool(data["cpu"]["valid"])
    else:
        total = aggregated_csv_row(report_dir / "locust_stats.csv")
    summary.requests, summary.failures = int(total.get("requests", 0)), int(total.get("failures", 0))
    summary.fail_ratio = summary.failures / summary.requests if summary.requests else 0.0
    summary.rps = float(total.get("rps", 0.0))
    summary.p50_ms, summary.p95_ms, summary.p99_ms = (
        float(total.get(k, 0.0)) for k in ("p50_ms", "p95_ms", "p99_ms")
    )
    if rtt := summary.row(*WS_RTT_ROW):
        summary.ws_rtt_p50_ms, summary.ws_rtt_p95_ms = float(rtt["p50_ms"]), float(rtt["p95_ms"])
    if any(warning in text for text in logs(report_dir) for warning in CPU_WARNINGS):
        summary.cpu_valid = False
    return summary


def aggregated_csv_row(path: Path) -> dict[str, Any]:
    try:
        with path.open() as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    except (OSError, StopIteration, KeyError):
        return {}
    return {
        "requests": row["Request Count"], "failures": row["Failure Count"], "rps": row["Requests/s"],
        "p50_ms": row["50%"], "p95_ms": row["95%"], "p99_ms": row["99%"],
    }  # fmt: skip


def logs(report_dir: Path) -> list[str]:
    return [p.read_text(errors="replace") for p in sorted(report_dir.glob("locust*.log"))]


def verdicts(summary: Summary) -> list[str]:
    lines = []
    if not summary.cpu_valid:
        peak = f" (peak {summary.cpu_peak_percent:.0f} %)" if summary.cpu_peak_percent else ""
        lines.append(
            f"INVALID RUN: a Locust process went above {summary.cpu_limit_percent:.0f} % CPU{peak}, so its "
            "numbers are not trustworthy; add LOCUST_WORKERS or lower USERS"
        )
    if summary.threshold_violations:
        lines.append(f"THRESHOLD VIOLATED: {'; '.join(summary.threshold_violations)}")
    if summary.exit_code not in (0, THRESHOLD_EXIT_CODE):
        lines.append(f"LOCUST EXITED WITH {summary.exit_code}: see {summary.report_dir / 'locust.log'}")
    return lines
