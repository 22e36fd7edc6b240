"""What the stack sampler costs the stack it reads, told from the host's noise: one long wrk run through
nginx, the sampler of every load test switched on and off in turns, window by window.

    python -m loadtest.bench.sampled                       # 100 rounds of four 1 s windows: ~7 minutes
    python -m loadtest.bench.sampled --rounds 40 --window 2

One blueprint stack (local runtime, the bench's blueprint row, no recycling) and one `wrk -t1 -c64 GET
/api/ping` through nginx for the whole run, so that both kinds of window share wrk's connections and how the
kernel spread them over nginx's and the app's workers (separate wrk runs differ by up to 10 % on that alone).
Each round is four neighbouring windows, plain-sampled-sampled-plain and the other way round every other
round: a steady drift of the host's load falls on both kinds alike. The sampler's log tail starts a second
before its first window, so that each of its reads parses a second of access lines as beside a load test.
At each window's edge nginx's stub_status gives the requests answered (less the sampler's own) and psutil
the CPU time of every server process (app, nginx, log pipes). Each round gives one ratio sampled / plain, by
requests/s and by the server's CPU per request; the report gives their median and a confidence interval for
it that assumes nothing of the noise (order statistics: the rounds' ratios sorted, the interval between the
k-th from either end). The goal (issue 18: within 2 %) is shown when the interval's low end is at least
0.98. It writes reports/sampled-<time>/: sampled.json (every window), sampled.md and the sampler's series.
Bad input: exit 2 with one line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.stackctl.config import ROOT
from deploy.stackctl.envargs import EnvParser
from deploy.stackctl.ports import LOOPBACK
from loadtest.bench import experiment, servers
from loadtest.bench.cli import BAD_INPUT  # noqa: F401  (tests and callers read it here)
from loadtest.bench.rows import BenchError, Params
from loadtest.bench.run import REQUEST_TIMEOUT_S, WARM_UP_S
from loadtest.bench.wrk import WrkRun, cpu_seconds, run_wrk
from loadtest.host import find_wrk, load_average, machine
from loadtest.sampler.sampler import Sampler
from loadtest.sampler.series import stub_status
from loadtest.sampler.sources import Source, fetch, source_for

GOAL = 0.98  # sampled / plain: within 2 %
CONFIDENCE = 0.90
PLAIN, SAMPLED = "plain", "sampled"
LEAD_S = (
    1.0  # the sampler's log tail starts this long before its first window: its first read is a full second's
)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float  # the chance that the true median lies within (at least), from the binomial


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> Interval | None:
    """The distribution-free interval for the median of `values`: sorted, from the k-th smallest to the
    k-th largest, k the largest whose coverage 1 - 2·P(Binomial(n, 1/2) < k) is still `confidence`.
    None when there are too few values for that confidence (5 for 90 %)."""
    n = len(values)
    ordered = sorted(values)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / float(2**n)

    ks = [k for k in range(1, n // 2 + 1) if coverage(k) >= confidence]
    if not ks:
        return None
    k = max(ks)
    return Interval(ordered[k - 1], ordered[n - k], round(coverage(k), 3))


def verdict(interval: Interval | None, goal: float = GOAL) -> str:
    if interval is None:
        return "not shown: too few rounds for an interval"
    span = f"{interval.low:.3f}-{interval.high:.3f} ({interval.confidence:.0%})"
    if interval.low >= goal:
        return f"shown: the median's interval {span} lies above {goal}"
    return f"not shown: the median's interval {span} reaches below {goal}"


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ratios round by round (sampled / plain by req/s; plain / sampled by CPU per request, so that
    above 1 is cheaper for both), their medians and intervals, and the sampler's own CPU."""
    cpu = "server_cpu_us_per_request"
    by_rps = [r[SAMPLED]["rps"] / r[PLAIN]["rps"] for r in rounds]
    by_cpu = [r[PLAIN][cpu] / r[SAMPLED][cpu] for r in rounds]
    summary: dict[str, Any] = {}
    for name, ratios in (("rps", by_rps), ("cpu", by_cpu)):
        interval = median_interval(ratios)
        summary[name] = {
            "ratios": [round(x, 4) for x in ratios],
            "median": round(statistics.median(ratios), 4),
            "interval": None
            if interval is None
            else {
                "low": round(interval.low, 4),
                "high": round(interval.high, 4),
                "confidence": interval.confidence,
            },
            "verdict": verdict(interval),
        }
    summary["rps_plain_median"] = round(statistics.median(r[PLAIN]["rps"] for r in rounds))
    summary["sampler_cpu_percent"] = [r[SAMPLED]["sampler_cpu_percent"] for r in rounds]
    return summary


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    cpus = summary["sampler_cpu_percent"]
    lines = [
        f"# The stack sampler's cost, in {meta['rounds']} interleaved rounds — {meta['started']}",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['usable_cpus']} usable CPUs; load average "
        f"(1/5/15 min) before {meta['load_average_before']}, after {meta['load_average_after']}; wrk and the "
        f"sampler on the same machine. {meta['settings']}; plain at {summary['rps_plain_median']:,} req/s "
        "(median).",
        "",
        "| sampled beside plain | median | interval of the median | goal (>= 0.98) | each round |",
        "|---|---|---|---|---|",
    ]
    for name, what in (("rps", "req/s, sampled / plain"), ("cpu", "server CPU per request, plain / sampled")):
        s = summary[name]
        span = "" if s["interval"] is None else f"{s['interval']['low']:.3f}-{s['interval']['high']:.3f}"
        confidence = "" if s["interval"] is None else f" ({s['interval']['confidence']:.0%})"
        each = ", ".join(f"{x:.3f}" for x in s["ratios"])
        lines.append(f"| {what} | {s['median']:.3f} | {span}{confidence} | {s['verdict']} | {each} |")
    lines += [
        "",
        f"The sampler's own thread: {min(cpus):.2f}-{max(cpus):.2f} % of one CPU (median "
        f"{statistics.median(cpus):.2f} %).",
        "",
        "Each round is four neighbouring windows of one wrk run, plain-sampled-sampled-plain or the other "
        "way round; its ratio sets the sampled windows' sum against the plain ones' (above 1: the sampled "
        "did better). The interval assumes nothing of the noise: the rounds' ratios sorted, from the k-th "
        "smallest to the k-th largest.",
    ]
    return "\n".join(lines) + "\n"


def parser() -> EnvParser:
    p = EnvParser(
        prog="sampled",
        description="The stack sampler's cost: windows with and without it in turns, in one wrk run.",
        tool="bench",
        error=BenchError,
    )
    p.add_argument("--rounds", type=int, default=100, help="Rounds of four windows (default 100).")
    p.add_argument("--window", type=float, default=1.0, help="Seconds per window (default 1).")
    p.add_argument("--connections", env="BENCH_CONNECTIONS")
    p.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY of the app (default 2).")
    p.add_argument("--out-root", type=Path, default=ROOT / "reports")
    return p


@dataclass(frozen=True)
class Edge:
    at: float  # monotonic seconds
    requests: int  # nginx's stub_status count
    cpu_s: float  # user + system of every server process


def window(before: Edge, after: Edge, own_requests: int) -> dict[str, Any]:
    """One window between two edges: its seconds, requests and the server's CPU seconds; `own_requests`:
    those the sampler sent through nginx (its stub_status reads), and the edge's own read, not counted."""
    answered = after.requests - before.requests - own_requests - 1
    seconds = after.at - before.at
    return {
        "seconds": round(seconds, 3),
        "requests": answered,
        "rps": round(answered / seconds, 1),
        "server_cpu_s": round(after.cpu_s - before.cpu_s, 4),
    }


def block(number: int) -> tuple[str, ...]:
    """Round `number`'s windows: plain, sampled, sampled, plain, and the other way round every other round,
    so that a steady drift of the host's load falls on both kinds alike."""
    return (PLAIN, SAMPLED, SAMPLED, PLAIN) if number % 2 == 0 else (SAMPLED, PLAIN, PLAIN, SAMPLED)


def rounded(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """A round's windows summed by kind: req/s, CPU µs per request (and the sampler's CPU share)."""
    measured: dict[str, Any] = {"windows": windows}
    for kind in (PLAIN, SAMPLED):
        mine = [w for w in windows if w["kind"] == kind]
        seconds, requests = sum(w["seconds"] for w in mine), sum(w["requests"] for w in mine)
        measured[kind] = {
            "rps": round(requests / seconds, 1),
            "server_cpu_us_per_request": round(sum(w["server_cpu_s"] for w in mine) / requests * 1e6, 2),
        }
    sampled_seconds = sum(w["seconds"] for w in windows if w["kind"] == SAMPLED)
    share = sum(w["sampler_cpu_s"] for w in windows) / sampled_seconds * 100
    measured[SAMPLED]["sampler_cpu_percent"] = round(share, 3)
    return measured


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def run(args: argparse.Namespace) -> Path:
    if args.rounds < 5:
        raise BenchError(f"--rounds={args.rounds}: at least 5 (fewer give no 90 % interval for the median)")
    if args.window < 1:
        raise BenchError(f"--window={args.window:g}: at least 1 s (the sampler reads once a second)")
    wrk = find_wrk()
    started = datetime.now(UTC)
    report_dir: Path = args.out_root / f"sampled-{started.strftime('%Y%m%d-%H%M%S')}"
    report_dir.mkdir(parents=True)
    params = Params(connections=args.connections, workers=args.workers)
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_before": load_average(),
        "rounds": args.rounds,
        "settings": f"one wrk -t1 -c{params.connections} GET {params.path} through nginx, {args.rounds} "
        f"rounds of four {args.window:g} s windows after {WARM_UP_S:g} s of warm-up, {args.workers} workers, "
        "no recycling (GUNICORN_MAX_REQUESTS=0)",
    }
    base = {**os.environ, "GUNICORN_MAX_REQUESTS": "0", "GUNICORN_MAX_REQUESTS_JITTER": "0"}
    ctx = servers.Context(params, args.workers, servers.blueprint_config(params, base), base, report_dir)
    server = servers.start("blueprint", ctx)
    if not isinstance(server, servers.Stack):
        raise BenchError("the blueprint row started no blueprint stack")
    handle = server.handle
    url, status_port = f"{server.url('nginx')}{params.path}", handle.settings.nginx_status_port
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        pids = [pid for each in server.roles("nginx").values() for pid in each]

        def edge() -> Edge:
            counts = stub_status(
                fetch(http.client.HTTPConnection(LOOPBACK, status_port, timeout=5), "/stub_status")
            )
            if counts is None:
                raise BenchError("nginx's stub_status answered without its counts")
            return Edge(time.monotonic(), counts["requests"], cpu_seconds(pids))

        kinds = [kind for number in range(args.rounds) for kind in block(number)]
        total = WARM_UP_S + len(kinds) * args.window + 1  # the last window ends before wrk does
        results: list[WrkRun] = []
        load = threading.Thread(
            target=lambda: results.append(
                run_wrk(
                    wrk, url, total, params.connections, REQUEST_TIMEOUT_S, report_dir / "wrk", lambda: {}
                )
            ),
            daemon=True,
        )
        load.start()
        due = time.monotonic() + WARM_UP_S
        windows: list[dict[str, Any]] = []
        sampler: Sampler | None = None
        ready: Source | None = None
        samples, sampler_cpu_s = 0, 0.0
        sleep_until(due - LEAD_S)
        if kinds[0] == SAMPLED:
            ready = source_for(handle)
        sleep_until(due)
        last = edge()
        for number, kind in enumerate(kinds):
            following = kinds[number + 1] if number + 1 < len(kinds) else PLAIN
            if kind == SAMPLED and sampler is None and ready is not None:
                path = report_dir / "series" / f"from-window-{number}.jsonl"
                sampler = Sampler(ready, path, lag_interval=handle.settings.app_loop_lag_interval)
                sampler.start()
                samples, sampler_cpu_s, ready = 0, 0.0, None
            due += args.window
            sleep_until(due - LEAD_S)
            if following == SAMPLED and sampler is None:
                ready = source_for(handle)
            sleep_until(due)
            if sampler is not None and following != SAMPLED:
                sampler.stop()
            now = edge()
            own = sampler.samples - samples if sampler else 0
            spent = sampler.cpu_seconds - sampler_cpu_s if sampler else 0.0
            windows.append({"kind": kind, **window(last, now, own), "sampler_cpu_s": spent})
            if sampler is not None:
                samples, sampler_cpu_s = sampler.samples, sampler.cpu_seconds
                if following != SAMPLED:
                    sampler = None
            last = now
            print(
                f"window {number + 1}/{len(kinds)} {kind}: {windows[-1]['rps']:,.0f} req/s", file=sys.stderr
            )
        rounds = [rounded(windows[n : n + len(block(0))]) for n in range(0, len(windows), len(block(0)))]
        load.join()
        if not results:
            raise BenchError(f"wrk did not finish; see {report_dir / 'wrk' / 'wrk.txt'}")
        meta["wrk"] = results[0].fields()
        if sorted(pids) != sorted(p for each in server.roles("nginx").values() for p in each):
            raise BenchError(
                "a server process was replaced during the run: its CPU was not counted throughout"
            )
    finally:
        server.stop()
    experiment.write_report(report_dir, "sampled", meta, summarize(rounds), rounds, markdown)
    return report_dir


def main(argv: list[str] | None = None) -> int:
    return experiment.main("sampled", parser, run, argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
