"""`make sweep`: its input is checked before anything runs, and a tiny real sweep writes its report."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from deploy.stackctl import stack
from loadtest import sweep
from loadtest.sweep import Axis, SweepError


def test_sweep_is_the_cartesian_product_of_the_values() -> None:
    axes = sweep.parse_sweep("WEB_CONCURRENCY=1,2,4  APP_THREADPOOL_TOKENS=40,200")
    assert axes == [Axis("WEB_CONCURRENCY", ("1", "2", "4")), Axis("APP_THREADPOOL_TOKENS", ("40", "200"))]
    combos = sweep.combinations(axes)
    assert len(combos) == 6
    assert combos[0] == {"WEB_CONCURRENCY": "1", "APP_THREADPOOL_TOKENS": "40"}
    assert combos[-1] == {"WEB_CONCURRENCY": "4", "APP_THREADPOOL_TOKENS": "200"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "SWEEP is empty"),
        ("WEB_CONCURENCY=1,2", "unknown knob WEB_CONCURENCY; did you mean WEB_CONCURRENCY?"),
        ("WEB_CONCURRENCY", "'WEB_CONCURRENCY' is not KNOB=value1,value2"),
        ("WEB_CONCURRENCY=1,many", "WEB_CONCURRENCY='many'"),
        ("GUNICORN_TIMEOUT=30,0", "GUNICORN_TIMEOUT='0': Input should be greater than or equal to 1"),
        ("WEB_CONCURRENCY=1,,2", "WEB_CONCURRENCY has an empty value"),
        ("WEB_CONCURRENCY=1 WEB_CONCURRENCY=2", "WEB_CONCURRENCY is given twice"),
        ("HTTP_PORT=80,81", "HTTP_PORT is chosen by the sweep itself"),
        ("PROFILE=default,nosuch", "no deploy/profiles/nosuch.env"),
    ],
)
def test_bad_sweep_input_is_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(SweepError) as raised:
        sweep.parse_sweep(text)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_cli_exits_non_zero_with_one_line_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sweep.main(["--sweep", "NGINX_NOPE=1", "--out-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown knob NGINX_NOPE" in err
    assert not list(tmp_path.iterdir()), "nothing may run or be written for bad input"


def test_refused_rules_come_from_the_rules_themselves() -> None:
    findings = stack.findings({"NGINX_UPSTREAM_KEEPALIVE_TIMEOUT": "15", "GUNICORN_KEEPALIVE": "5"}, base={})
    assert sweep.refused_rules(findings) == (
        "rule 1 (upstream keep-alive): NGINX_UPSTREAM_KEEPALIVE_TIMEOUT=15 must be < GUNICORN_KEEPALIVE=5"
    )
    assert sweep.refused_rules(stack.findings({}, base={})) == ""


def test_recommendation_says_what_it_optimised() -> None:
    def run(index: int, workers: str, rps: float, p95: float, fail: float, valid: bool) -> sweep.Result:
        metrics = {"rps": rps, "p95_ms": p95, "fail_ratio": fail, "cpu_valid": valid}
        return sweep.Result(index, {"WEB_CONCURRENCY": workers}, "ok", metrics=metrics)

    results = [
        run(1, "1", 400, 80, 0.0, True),
        run(2, "2", 700, 60, 0.0, True),
        run(3, "4", 900, 3000, 0.0, True),  # fastest, but p95 over the bound
        run(4, "8", 950, 50, 0.0, False),  # fastest valid-looking, but Locust was CPU-bound
        sweep.Result(5, {"WEB_CONCURRENCY": "16"}, "refused", refused_rule="rule 6"),
    ]
    text = sweep.recommend(results, sweep.Bounds(max_fail_ratio=0.01, max_p95_ms=1000))
    assert text.startswith("recommended: WEB_CONCURRENCY=2")
    assert "highest throughput" in text and "p95 <= 1000 ms" in text and "2 of 5" in text


@pytest.mark.loadtest
def test_tiny_sweep_writes_its_report(tmp_path: Path) -> None:
    base_env = {
        k: v
        for k, v in os.environ.items()
        if k not in sweep.KNOBS and k != "ALLOW_UNSAFE_CONFIG" and not k.startswith("LOCUST_")
    }
    base_env.update(
        RUNTIME="local",
        PROFILE="default",
        WEB_CONCURRENCY="1",
        GUNICORN_LOG_LEVEL="warning",
        APP_LOG_LEVEL="warning",
    )
    # 5 s keep-alive breaks rule 1 against NGINX_UPSTREAM_KEEPALIVE_TIMEOUT=15: refused, never started.
    axes = sweep.parse_sweep("GUNICORN_KEEPALIVE=20,30,5")
    load = sweep.Load("http", users=4, spawn_rate=4, run_time="3s")
    report_dir, results, recommendation = sweep.run_sweep(axes, load, tmp_path, base_env=base_env)

    assert report_dir.parent == tmp_path and report_dir.name.startswith("sweep-")
    with (report_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["GUNICORN_KEEPALIVE"], r["status"]) for r in rows] == [
        ("20", "ok"),
        ("30", "ok"),
        ("5", "refused"),
    ]
    for row in rows[:2]:
        assert float(row["rps"]) > 0 and int(row["requests"]) > 0
        assert float(row["p50_ms"]) <= float(row["p95_ms"]) <= float(row["p99_ms"])
        assert row["cpu_valid"] in ("True", "False")
        assert row["refused_rule"] == ""
    refused = rows[2]
    assert "rule 1" in refused["refused_rule"]
    assert "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT" in refused["refused_rule"]
    assert "GUNICORN_KEEPALIVE=5" in refused["refused_rule"]
    assert refused["rps"] == "" and refused["locust_report"] == ""
    assert not (report_dir / "stacks" / "03" / "state.json").exists()

    page = (report_dir / "index.html").read_text()
    assert page.count("<tr class=") == 3
    assert page.count('src="data:image/png;base64,') == len(axes)
    assert (report_dir / "GUNICORN_KEEPALIVE.png").read_bytes().startswith(b"\x89PNG")
    assert recommendation in page.replace("&gt;", ">").replace("&lt;", "<").replace("&#x27;", "'")
    for run in results[:2]:
        assert not (report_dir / "stacks" / f"{run.index:02d}" / "state.json").exists(), "stack left up"
        assert (report_dir / run.locust_report).is_dir()
        series = (report_dir / run.locust_report / "stack-series.jsonl").read_text().splitlines()
        assert series, "each combination's stack is sampled beside its load"
        report = (report_dir / run.locust_report / "report.html").read_text()
        assert 'class="stack-section"' in report and '"title":"Requests/s"' in report, "and charted"


def test_default_p95_bound_is_twice_the_best_p95_measured() -> None:
    def run(index: int, rps: float, p95: float) -> sweep.Result:
        metrics = {"rps": rps, "p95_ms": p95, "fail_ratio": 0.0, "cpu_valid": True}
        return sweep.Result(index, {"APP_THREADPOOL_TOKENS": str(index)}, "ok", metrics=metrics)

    text = sweep.recommend([run(1, 90, 1200), run(2, 95, 2500), run(3, 80, 1100)], sweep.Bounds())
    assert text.startswith("recommended: APP_THREADPOOL_TOKENS=1 ")
    assert "p95 <= 2200 ms (2 x the best p95)" in text
