"""loadtest/bench/sampled.py, the sampler's cost told from the host's noise: the median's interval is the
order-statistics one of the binomial tables, the goal reads its low end, and a short real run switches the
sampler on and off window by window inside one wrk run. No timing is asserted: the numbers belong to the
machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench import sampled
from loadtest.sampler.sampler import read_series


def test_the_median_interval_is_the_order_statistics_one() -> None:
    # n = 10: the k-th from either end covers 1 - 2·P(Bin(10, 1/2) < k): k=2 gives 97.9 %, k=3 only 89.1 %.
    values = [float(x) for x in (7, 3, 10, 1, 5, 9, 2, 8, 4, 6)]
    interval = sampled.median_interval(values)
    assert interval == sampled.Interval(2.0, 9.0, 0.979)
    assert sampled.median_interval(values, confidence=0.85) == sampled.Interval(3.0, 8.0, 0.891)
    assert sampled.median_interval(values[:4]) is None, "4 values cannot give 90 %"
    assert sampled.median_interval(values[:5]) == sampled.Interval(1.0, 10.0, 0.938)


def test_the_goal_is_shown_only_when_the_interval_stays_above_98_percent() -> None:
    assert sampled.verdict(sampled.Interval(0.981, 1.02, 0.93)).startswith("shown")
    assert sampled.verdict(sampled.Interval(0.979, 1.02, 0.93)).startswith("not shown")
    assert sampled.verdict(None).startswith("not shown: too few rounds")


def test_a_round_sums_its_windows_by_kind() -> None:
    def window(kind: str, requests: int, cpu_s: float, sampler_cpu_s: float = 0.0) -> dict[str, object]:
        return {
            "kind": kind,
            "seconds": 2.0,
            "requests": requests,
            "server_cpu_s": cpu_s,
            "sampler_cpu_s": sampler_cpu_s,
        }

    measured = sampled.rounded(
        [
            window("plain", 20000, 2.0),
            window("sampled", 19000, 2.0, 0.02),
            window("sampled", 21000, 2.2, 0.02),
            window("plain", 22000, 2.2),
        ]
    )
    assert measured["plain"] == {"rps": 10500.0, "server_cpu_us_per_request": 100.0}
    assert measured["sampled"] == {
        "rps": 10000.0,
        "server_cpu_us_per_request": 105.0,
        "sampler_cpu_percent": 1.0,
    }
    assert sampled.block(0) == ("plain", "sampled", "sampled", "plain")
    assert sampled.block(1) == ("sampled", "plain", "plain", "sampled")


def test_too_few_rounds_are_refused_in_one_line_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sampled.main(["--rounds", "4", "--out-root", str(tmp_path)]) == sampled.BAD_INPUT
    error = capsys.readouterr().err.strip()
    assert error == "sampled: --rounds=4: at least 5 (fewer give no 90 % interval for the median)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.loadtest
def test_a_short_run_switches_the_sampler_window_by_window_in_one_wrk_run(tmp_path: Path) -> None:
    assert sampled.main(["--rounds", "5", "--window", "1", "--out-root", str(tmp_path)]) == 0
    (report,) = tmp_path.glob("sampled-*")
    data = json.loads((report / "sampled.json").read_text())
    windows = [w for r in data["rounds"] for w in r["windows"]]
    assert [w["kind"] for w in windows] == [kind for n in range(5) for kind in sampled.block(n)]
    assert all(w["requests"] > 100 for w in windows), "wrk ran through every window"
    assert all((w["sampler_cpu_s"] > 0) is (w["kind"] == "sampled") for w in windows)
    assert data["wrk"]["errors"] == 0
    # One sampler per stretch of sampled windows, each reading once a second from its first window's edge
    # until its last one's.
    kinds = "".join(w["kind"][0] for w in windows)
    series = sorted((report / "series").iterdir())
    assert len(series) == len([run for run in kinds.split("p") if run]) == 7
    for path in series:
        samples = read_series(path)
        assert samples and all(not s["errors"] for s in samples)
        assert samples[0]["nginx"]["lines"] > 100, "its first read: the access lines of the second before"
    summary = data["summary"]
    assert len(summary["rps"]["ratios"]) == 5 and summary["rps"]["interval"]["confidence"] == 0.938
    page = (report / "sampled.md").read_text()
    assert "| req/s, sampled / plain |" in page and "| server CPU per request, plain / sampled |" in page
