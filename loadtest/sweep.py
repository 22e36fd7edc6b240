"""`make sweep`: run the stack once per combination of knob values, load it, and report what each did.

    python -m loadtest.sweep --sweep 'WEB_CONCURRENCY=1,2,4 APP_THREADPOOL_TOKENS=40,200' \\
        --scenario http --users 50 --run-time 20s

For every combination of the SWEEP values (their cartesian product): `stackctl check` with those values —
a combination it refuses is recorded with the rule it breaks and not run — else a fresh stack with those
values on free ports (`stackctl up` in its own run directory, either runtime), the Locust scenario
headless with thresholds off (a bad combination is measured, not aborted), `stackctl down`.
It writes reports/sweep-<timestamp>/: results.csv (one row per combination), index.html (the table, a
plot of each metric against each knob, the recommendation) and the PNGs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import difflib
import html
import itertools
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from deploy.stackctl.config import KNOBS, PROFILES_DIR, ROOT
from loadtest.runner import locustfiles, parse_run_time, run_headless
from loadtest.stack import LoadtestError
from service.settings import ConfigError, load_settings, usable_cpus

# Chosen per combination by the sweep itself: every stack gets its own free ports and run directory.
OWNED_BY_SWEEP = ("HTTP_PORT", "NGINX_STATUS_PORT", "GUNICORN_BIND", "NGINX_LISTEN_PORT", "NGINX_RUN_DIR")
METRICS = (
    ("rps", "requests/s"),
    ("p50_ms", "p50 (ms)"),
    ("p95_ms", "p95 (ms)"),
    ("p99_ms", "p99 (ms)"),
    ("fail_ratio", "failure ratio"),
)
SUMMARY_FIELDS = (
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "requests",
    "failures",
    "fail_ratio",
    "ws_rtt_p50_ms",
    "ws_rtt_p95_ms",
    "cpu_valid",
)


class SweepError(Exception):
    """Bad sweep input; the message is one line naming the knob, the value and the rule."""


@dataclass(frozen=True)
class Axis:
    knob: str
    values: tuple[str, ...]


@dataclass
class Result:
    index: int
    knobs: dict[str, str]
    status: str = "pending"  # ok, refused or failed
    refused_rule: str = ""
    note: str = ""
    locust_report: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.knobs.items())

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- parsing -------------------------------------------------------------------------------------------


def parse_sweep(text: str) -> list[Axis]:
    """'A=1,2 B=x,y' -> axes, each value checked against the knob's own rule before anything runs."""
    tokens = text.split()
    if not tokens:
        raise SweepError("SWEEP is empty: give knobs and values, e.g. SWEEP='WEB_CONCURRENCY=1,2,4'")
    axes: list[Axis] = []
    for token in tokens:
        name, equals, raw = token.partition("=")
        if not equals or not name:
            raise SweepError(f"SWEEP: {token!r} is not KNOB=value1,value2")
        if name not in KNOBS:
            close = difflib.get_close_matches(name, KNOBS, n=1)
            hint = f"; did you mean {close[0]}?" if close else " (knobs: docs/SETTINGS.md)"
            raise SweepError(f"SWEEP: unknown knob {name}{hint}")
        if name in OWNED_BY_SWEEP or name == "RUNTIME":
            raise SweepError(f"SWEEP: {name} is chosen by the sweep itself (each stack gets free ports)")
        if any(axis.knob == name for axis in axes):
            raise SweepError(f"SWEEP: {name} is given twice; list all its values once: {name}=a,b")
        values = tuple(raw.split(","))
        for value in values:
            check_value(name, value)
        if len(set(values)) != len(values):
            raise SweepError(f"SWEEP: {name}={raw} repeats a value")
        axes.append(Axis(name, values))
    return axes


def check_value(name: str, value: str) -> None:
    if value == "":
        raise SweepError(f"SWEEP: {name} has an empty value; write {name}=a,b with no empty entries")
    if name == "PROFILE":
        if not (PROFILES_DIR / f"{value}.env").is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.env")))
            raise SweepError(f"SWEEP: PROFILE={value!r}: no deploy/profiles/{value}.env (known: {known})")
        return
    try:
        load_settings(**{KNOBS[name]: value})
    except ConfigError as error:
        raise SweepError(f"SWEEP: {error}") from None


def combinations(axes: Sequence[Axis]) -> list[dict[str, str]]:
    return [
        dict(zip([a.knob for a in axes], values, strict=True))
        for values in itertools.product(*(a.values for a in axes))
    ]


# --- one combination -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Stackctl:
    """`python -m deploy.stackctl` with a run directory and environment: the same path `make` takes."""

    run_dir: Path
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy.stackctl", "--run-dir", str(self.run_dir), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


RULE_LINE = re.compile(r"✗ error (rule [^:]+): (.+)")


def refused_rules(output: str) -> str:
    """The broken rules from `stackctl check` output, else its last meaningful line."""
    broken = [f"{m.group(1)}: {m.group(2).strip()}" for m in RULE_LINE.finditer(output)]
    if broken:
        return "; ".join(broken)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    failed = [line for line in lines if "failed" in line or "error" in line.lower()]
    return (failed or lines or ["check refused without saying why"])[-1]


def stack_env(base: dict[str, str], knobs: dict[str, str], runtime: str) -> dict[str, str]:
    env = {**base, **knobs, "RUNTIME": runtime}
    env["HTTP_PORT"] = str(free_port())
    if runtime == "local":
        env["NGINX_STATUS_PORT"] = str(free_port())
        env["GUNICORN_BIND"] = f"127.0.0.1:{free_port()}"
    return env


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit {result.returncode}"


@contextmanager
def locust_environment(knobs: dict[str, str]) -> Iterator[None]:
    """LOCUST_* knobs configure the load generator, which reads them from this process's environment."""
    saved = {name: os.environ.get(name) for name in knobs if name.startswith("LOCUST_")}
    os.environ.update({name: knobs[name] for name in saved})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Load:
    scenario: str
    users: int
    spawn_rate: float
    run_time: str
    workers: int = 0


def run_combination(
    result: Result,
    load: Load,
    base_env: dict[str, str],
    runtime: str,
    report_dir: Path,
    step: Callable[[str], None],
) -> None:
    env = stack_env(base_env, result.knobs, runtime)
    stackctl = Stackctl(report_dir / "stacks" / f"{result.index:02d}", env)
    step("make check")
    checked = stackctl("check")
    if checked.returncode != 0:
        result.status, result.refused_rule = "refused", refused_rules(checked.stdout + checked.stderr)
        return
    try:
        step("starting the stack")
        started = stackctl("up")
        if started.returncode != 0:
            result.status, result.note = "failed", f"stackctl up: {last_line(started)}"
            return
        step(f"{load.scenario}: {load.users} users for {load.run_time}")
        out_dir = report_dir / "locust" / f"{result.index:02d}"
        try:
            with locust_environment(result.knobs):
                summary = run_headless(
                    host=f"http://127.0.0.1:{env['HTTP_PORT']}",
                    scenario=load.scenario,
                    users=load.users,
                    spawn_rate=load.spawn_rate,
                    run_time=load.run_time,
                    out_dir=out_dir,
                    workers=load.workers,
                    thresholds=False,
                    run_dir=stackctl.run_dir,
                )
        except LoadtestError as error:
            result.status, result.note = "failed", f"load test: {error}"
            return
        values = summary.to_dict()
        result.metrics = {name: values.get(name) for name in SUMMARY_FIELDS}
        result.locust_report = os.path.relpath(Path(summary.report_dir), report_dir)
        result.status = "ok" if values.get("requests") else "failed"
        if not values.get("requests"):
            result.note = f"Locust made no requests (exit {values.get('exit_code')})"
    finally:
        step("stopping the stack")
        stackctl("down")


# --- the report ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    max_fail_ratio: float = 0.01
    max_p95_ms: float = 0.0  # 0 = twice the lowest p95 the sweep measured (fits any scenario's scale)


def recommend(results: list[Result], bounds: Bounds) -> str:
    measured = [r for r in results if r.status == "ok"]
    valid = [r for r in measured if r.metrics.get("cpu_valid")]
    p95s = [r.metric("p95_ms") or 0.0 for r in valid]
    if bounds.max_p95_ms:
        p95_bound, p95_text = bounds.max_p95_ms, f"p95 <= {bounds.max_p95_ms:g} ms"
    else:
        p95_bound = 2 * min(p95s, default=0.0)
        p95_text = f"p95 <= {p95_bound:g} ms (2 x the best p95)"
    eligible = [
        r
        for r in valid
        if (r.metric("fail_ratio") or 0.0) <= bounds.max_fail_ratio
        and (r.metric("p95_ms") or 0.0) <= p95_bound
    ]
    rule = f"failure ratio <= {bounds.max_fail_ratio:.1%}, {p95_text} and Locust CPU below 90 %"
    if not eligible:
        return (
            f"no recommendation: none of {len(measured)} measured runs had {rule} "
            f"({len(measured) - len(valid)} had the load generator CPU-bound)"
        )
    best = max(eligible, key=lambda r: r.metric("rps") or 0.0)
    return (
        f"recommended: {best.label} — the highest throughput ({best.metric('rps') or 0:.1f} requests/s, "
        f"p95 {best.metric('p95_ms') or 0:.0f} ms) among the {len(eligible)} of {len(results)} "
        f"combinations with {rule}"
    )


def write_csv(path: Path, axes: Sequence[Axis], results: list[Result]) -> None:
    columns = ["combination", *(a.knob for a in axes), "status", *SUMMARY_FIELDS]
    columns += ["refused_rule", "note", "locust_report"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for r in results:
            metrics = {
                name: ("" if r.metrics.get(name) is None else r.metrics[name]) for name in SUMMARY_FIELDS
            }
            row = {"combination": r.index, **r.knobs, "status": r.status, **metrics}
            writer.writerow(
                {**row, "refused_rule": r.refused_rule, "note": r.note, "locust_report": r.locust_report}
            )


def plot_knob(axis: Axis, axes: Sequence[Axis], results: list[Result], path: Path) -> None:
    """One figure per knob: every metric against the knob's values, one line per other-knob setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [a.knob for a in axes if a.knob != axis.knob]
    series: dict[str, list[Result]] = {}
    for r in results:
        key = " ".join(f"{k}={r.knobs[k]}" for k in others) or axis.knob
        series.setdefault(key, []).append(r)
    positions = {value: i for i, value in enumerate(axis.values)}
    metrics = list(METRICS)
    if any(r.metric("ws_rtt_p95_ms") is not None for r in results):
        metrics += [("ws_rtt_p50_ms", "WS round-trip p50 (ms)"), ("ws_rtt_p95_ms", "WS round-trip p95 (ms)")]
    columns = min(4, len(metrics))
    rows_of_panels = -(-len(metrics) // columns)
    figure, grid = plt.subplots(
        rows_of_panels, columns, figsize=(4 * columns, 3.2 * rows_of_panels + 0.6), squeeze=False
    )
    panels = grid.flatten()
    for unused in panels[len(metrics) :]:
        unused.set_visible(False)
    for panel, (metric, title) in zip(panels, metrics, strict=False):
        for key, rows in series.items():
            points = [
                (positions[r.knobs[axis.knob]], r.metric(metric), r.metrics.get("cpu_valid"))
                for r in rows
                if r.status == "ok" and r.metric(metric) is not None
            ]
            if not points:
                continue
            xs, ys, _ = zip(*points, strict=True)
            line = panel.plot(xs, ys, marker="o", label=key)[0]
            hollow = [(x, y) for x, y, valid in points if not valid]
            if hollow:
                hx, hy = zip(*hollow, strict=True)
                panel.scatter(hx, hy, s=90, facecolors="none", edgecolors=line.get_color(), linewidths=1.5)
        panel.set_title(title)
        panel.set_xticks(range(len(axis.values)), list(axis.values))
        panel.set_xlabel(axis.knob)
        panel.grid(alpha=0.3)
        panel.set_ylim(bottom=0)
    handles, labels = panels[0].get_legend_handles_labels()
    legend_room = 0.0
    if len(series) > 1 and handles:
        legend_room = 0.5 / figure.get_figheight() * (1 + len(labels) // 4)
        figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
    figure.suptitle(f"{axis.knob}: refused/failed combinations have no point; circled = Locust CPU > 90 %")
    figure.tight_layout(rect=(0, legend_room, 1, 0.96))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def machine() -> dict[str, str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "usable_cpus": str(usable_cpus()),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "note": "the load generator (Locust) runs on the same machine as the stack",
    }


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1 else f"{value:.1f}"
    return html.escape("" if value is None else str(value))


def write_html(
    path: Path,
    axes: Sequence[Axis],
    results: list[Result],
    images: list[Path],
    recommendation: str,
    meta: dict[str, Any],
) -> None:
    head = ["#", *(a.knob for a in axes), "status", *SUMMARY_FIELDS, "refused rule / note", "Locust"]
    rows = []
    for r in results:
        report = f'<a href="{html.escape(r.locust_report)}/">report</a>' if r.locust_report else ""
        cells = [str(r.index), *(html.escape(r.knobs[a.knob]) for a in axes), r.status]
        cells += [cell(r.metrics.get(name)) for name in SUMMARY_FIELDS]
        cells += [html.escape(r.refused_rule or r.note), report]
        rows.append(f'<tr class="{r.status}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    pictures = "\n".join(
        f'<h3>{html.escape(p.stem)}</h3><img alt="{html.escape(p.stem)}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
    )
    about = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in meta.items())
    path.write_text(
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>sweep {html.escape(meta["started"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
tr.refused {{ color: #a33; }} tr.failed {{ color: #a60; }} img {{ max-width: 100%; }}
.recommendation {{ font-size: 1.1em; font-weight: bold; padding: 0.5em; background: #eef6ee; }}
</style></head><body>
<h1>Sweep {html.escape(meta["sweep"])}</h1>
<p class="recommendation">{html.escape(recommendation)}</p>
<ul>{about}</ul>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>
{chr(10).join(rows)}
</table>
<h2>Each metric against each knob</h2>
{pictures}
</body></html>
"""
    )


def write_report(
    report_dir: Path, axes: Sequence[Axis], results: list[Result], bounds: Bounds, meta: dict[str, Any]
) -> str:
    recommendation = recommend(results, bounds)
    write_csv(report_dir / "results.csv", axes, results)
    images = []
    for axis in axes:
        image = report_dir / f"{axis.knob}.png"
        plot_knob(axis, axes, results, image)
        images.append(image)
    write_html(report_dir / "index.html", axes, results, images, recommendation, meta)
    summary = {**meta, "recommendation": recommendation, "results": [asdict(r) for r in results]}
    (report_dir / "sweep.json").write_text(json.dumps(summary, indent=2, default=str))
    return recommendation


# --- the sweep -------------------------------------------------------------------------------------------


def resolve_runtime(env: dict[str, str]) -> str:
    result = Stackctl(ROOT / ".run" / "local", env)("runtime", timeout=60)
    if result.returncode != 0:
        raise SweepError(f"stackctl runtime: {last_line(result)}")
    return result.stdout.strip().splitlines()[-1]


def check_load(load: Load) -> None:
    try:
        locustfiles(load.scenario)
        parse_run_time(load.run_time)
    except LoadtestError as error:
        raise SweepError(str(error)) from None
    if load.users < 1 or load.spawn_rate <= 0 or load.workers < 0:
        raise SweepError(f"USERS={load.users}, SPAWN_RATE={load.spawn_rate}: need at least 1 user")


def run_sweep(
    axes: Sequence[Axis],
    load: Load,
    out_root: Path,
    bounds: Bounds = Bounds(),
    base_env: dict[str, str] | None = None,
    console: Console | None = None,
) -> tuple[Path, list[Result], str]:
    console = console or Console(stderr=True)
    base_env = dict(os.environ if base_env is None else base_env)
    base_env.pop("ALLOW_UNSAFE_CONFIG", None)  # a refused combination is recorded, never forced
    check_load(load)
    runtime = resolve_runtime(base_env)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report_dir = out_root / f"sweep-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=False)
    results = [Result(i, knobs) for i, knobs in enumerate(combinations(axes), start=1)]
    meta: dict[str, Any] = {
        "sweep": " ".join(f"{a.knob}={','.join(a.values)}" for a in axes),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "runtime": runtime,
        "scenario": load.scenario,
        "users": load.users,
        "spawn_rate": load.spawn_rate,
        "run_time": load.run_time,
        "locust_workers": load.workers,
        **machine(),
    }
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    interrupted = False

    def on_interrupt(signum: int, frame: Any) -> None:
        # The Locust runner turns Ctrl-C into "stop this run and summarise it"; remember that the user
        # wanted the whole sweep to stop.
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    with sigint_handler(on_interrupt), Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("sweep", total=len(results))
        for result in results:
            prefix = f"[{result.index}/{len(results)}] {result.label}"

            def step(what: str, prefix: str = prefix) -> None:
                progress.update(task, description=f"{prefix}: {what}")

            try:
                run_combination(result, load, base_env, runtime, report_dir, step)
            except (subprocess.TimeoutExpired, OSError) as error:
                result.status, result.note = "failed", f"{type(error).__name__}: {error}"
            except KeyboardInterrupt:
                interrupted = True
            if interrupted:
                result.status, result.note = "failed", "interrupted (Ctrl-C): numbers cover part of the run"
            progress.console.print(f"{prefix}: {outcome(result)}", highlight=False)
            progress.advance(task)
            if interrupted:
                break
        progress.update(task, description=f"sweep done: {len(results)} combinations")
    for result in results:
        if result.status == "pending":
            result.status, result.note = "failed", "not run: the sweep was interrupted"
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    recommendation = write_report(report_dir, axes, results, bounds, meta)
    if interrupted:
        raise SweepError(f"interrupted; the partial report is in {report_dir}")
    return report_dir, results, recommendation


@contextmanager
def sigint_handler(handler: Callable[[int, Any], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def outcome(result: Result) -> str:
    if result.status == "refused":
        return f"refused — {result.refused_rule}"
    if result.status != "ok":
        return f"{result.status} — {result.note}"
    m = result.metric
    valid = "" if result.metrics.get("cpu_valid") else " (Locust CPU > 90 %: numbers invalid)"
    return (
        f"{m('rps') or 0:.1f} req/s, p50 {m('p50_ms') or 0:.0f} ms, p95 {m('p95_ms') or 0:.0f} ms, "
        f"p99 {m('p99_ms') or 0:.0f} ms, failures {m('fail_ratio') or 0:.1%}{valid}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="", help="'KNOB=v1,v2 KNOB2=a,b' (env names, docs/SETTINGS.md)")
    parser.add_argument("--scenario", default="http")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=0, help="users started per second (0 = all)")
    parser.add_argument("--run-time", default="15s", help="per combination, Locust syntax (20s, 1m)")
    parser.add_argument("--workers", type=int, default=0, help="Locust worker processes (0 = one process)")
    parser.add_argument("--max-fail-ratio", type=float, default=Bounds.max_fail_ratio)
    parser.add_argument(
        "--max-p95-ms", type=float, default=Bounds.max_p95_ms, help="p95 bound (0 = 2 x the best p95)"
    )
    parser.add_argument("--out-root", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    try:
        axes = parse_sweep(args.sweep)
        load = Load(args.scenario, args.users, args.spawn_rate or args.users, args.run_time, args.workers)
        bounds = Bounds(args.max_fail_ratio, args.max_p95_ms)
        report_dir, _, recommendation = run_sweep(axes, load, args.out_root, bounds)
    except SweepError as error:
        print(f"make sweep: {error}", file=sys.stderr)
        return 2
    print(recommendation)
    print(f"report: {report_dir / 'index.html'}  (results.csv beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
