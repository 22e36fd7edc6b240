"""One status vocabulary for drill, bench and sweep rows (loadtest/status.py): what decides each status,
the exit code it leads to, and the plain word in the JSON, CSV and HTML files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from loadtest.bench import cli as bench_cli
from loadtest.bench.rows import ROWS
from loadtest.bench.rows import Row as BenchRow
from loadtest.drill import cli as drill_cli
from loadtest.drill.plan import Row
from loadtest.drill.report import write_report
from loadtest.limits import THRESHOLD_EXIT_CODE
from loadtest.status import Status
from loadtest.sweep import Axis, Result
from loadtest.sweep.report import write_csv


def test_a_drill_passes_or_fails_on_what_it_lost(tmp_path: Path) -> None:
    lost = Row("reload", "local", "HUP", failures={"POST 502": 2})
    lost.verdict()
    kept = Row("worker-kill", "local", "KILL", failures={"POST 502": 2}, allowed=2)
    kept.verdict()
    skipped = Row("recreate", "docker", "recreate", Status.SKIPPED, "no Docker engine reachable")
    assert (lost.status, kept.status) == (Status.FAILED, Status.PASSED)
    assert [r.status.ran for r in (lost, kept, skipped)] == [True, True, False]
    assert drill_cli.exit_code([kept, skipped]) == 0
    assert drill_cli.exit_code([kept, lost]) == THRESHOLD_EXIT_CODE
    assert drill_cli.exit_code([kept, Row("a", "local", "b", Status.ERROR)]) == drill_cli.COULD_NOT_RUN

    write_report(tmp_path, [lost, kept, skipped], {"started": "now"})
    data = json.loads((tmp_path / "drill.json").read_text())
    assert [row["status"] for row in data["rows"]] == ["failed", "passed", "skipped"]
    assert data["passed"] is False
    page = (tmp_path / "index.html").read_text()
    assert all(f'<tr class="{word}">' in page for word in ("failed", "passed", "skipped"))
    assert "failed (lost 2)" in page and "skipped: no Docker engine reachable" in page


def test_a_bench_row_that_could_not_run_is_an_error_a_missing_server_is_skipped() -> None:
    rows = [BenchRow(ROWS[0], Status.OK), BenchRow(ROWS[-1], Status.SKIPPED, "no `-k asgi` worker")]
    assert bench_cli.exit_code(rows) == 0
    assert bench_cli.exit_code([*rows, BenchRow(ROWS[1], Status.ERROR, "did not start")]) == 1
    assert json.loads(json.dumps(rows[1].to_dict()))["status"] == "skipped"


def test_a_sweep_writes_the_plain_word(tmp_path: Path) -> None:
    results = [
        Result(1, {"GUNICORN_KEEPALIVE": "20"}, Status.OK, metrics={"rps": 10.0}),
        Result(2, {"GUNICORN_KEEPALIVE": "5"}, Status.REFUSED, refused_rule="rule 1"),
        Result(3, {"GUNICORN_KEEPALIVE": "30"}, Status.ERROR, note="stack: did not start"),
    ]
    write_csv(tmp_path / "results.csv", [Axis("GUNICORN_KEEPALIVE", ("20", "5", "30"))], results)
    with (tmp_path / "results.csv").open() as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["ok", "refused", "error"]
