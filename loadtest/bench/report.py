"""What `make bench` writes to reports/bench-<time>/: bench.json (every row with every field, the machine
and its load), bench.md (the tables) and bench.png (requests/s and server CPU per request of each row)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loadtest.bench.rows import Row
from loadtest.limits import CPU_LIMIT
from loadtest.status import Status


def num(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def flag(row: Row) -> str:
    return " ⚠ wrk CPU-bound" if row.values.get("generator_cpu_bound") else ""


def cpu_cell(values: dict[str, Any]) -> str:
    """Total server CPU per request, and by role when there is more than one (app + nginx + log pipes)."""
    total, by_role = values.get("server_cpu_us_per_request"), values.get("server_cpu_us_by_role") or {}
    if len(by_role) < 2:
        return num(total)
    return f"{num(total)} ({' + '.join(f'{num(us)} {role}' for role, us in by_role.items())})"


def throughput_table(rows: list[Row]) -> list[str]:
    lines = [
        "| row | what | req/s | p50 ms | p99 ms | x bare | errors | server CPU µs/req | wrk CPU % | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        v = row.values
        note = row.note if row.status == Status.OK else f"**{row.status}**: {row.note}"
        lines.append(
            f"| {row.spec.name} | {row.spec.about} | {num(v.get('rps'))} | {num(v.get('p50_ms'), 2)} "
            f"| {num(v.get('p99_ms'), 2)} | {num(v.get('ratio_to_bare'), 2)} | {num(v.get('errors'))} "
            f"| {cpu_cell(v)} | {num(v.get('wrk_cpu_percent'))}{flag(row)} "
            f"| {note} |"
        )
    return lines


def capacity_tables(rows: list[Row]) -> list[str]:
    lines: list[str] = []
    slow = [r for r in rows if r.spec.kind == "slow"]
    if slow:
        lines += [
            "| row | held at once | delay s | answered | p50 ms | p99 ms | p99 - delay ms | errors "
            "| wrk CPU % | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in slow:
            v = row.values
            lines.append(
                f"| {row.spec.name} | {num(v.get('n'))} | {num(v.get('delay_s'), 2)} "
                f"| {num(v.get('requests'))} | {num(v.get('p50_ms'))} | {num(v.get('p99_ms'))} "
                f"| {num(v.get('p99_over_delay_ms'))} | {num(v.get('errors'))} "
                f"| {num(v.get('wrk_cpu_percent'))}{flag(row)} | {row.status} {row.note} |"
            )
        lines.append("")
    sockets = [r for r in rows if r.spec.kind == "websocket"]
    if sockets:
        lines += [
            "| row | WebSockets | held s | connected | drops | round trip p50 / p99 ms "
            "| app RSS before → held → end MiB | RSS per WebSocket KiB | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in sockets:
            v = row.values
            lines.append(
                f"| {row.spec.name} | {num(v.get('n'))} | {num(v.get('held_s'))} | {num(v.get('connected'))} "
                f"| {num(v.get('drops'))} | {num(v.get('rtt_p50_ms'), 2)} / {num(v.get('rtt_p99_ms'), 2)} "
                f"| {num(v.get('worker_rss_before_mib'))} → {num(v.get('worker_rss_held_mib'))} "
                f"→ {num(v.get('worker_rss_end_mib'))} "
                f"| {num(v.get('rss_kib_per_ws'))} | {row.status} {row.note} |"
            )
    return lines


def rooms_table(rows: list[Row]) -> list[str]:
    fanout = [r for r in rows if r.spec.kind == "rooms"]
    if not fanout:
        return []
    lines = [
        "| row | members | msg/s | deliveries/s | p50 / p99 ms | missing | server CPU µs/delivery "
        "| client CPU % | largest fan-out, p99 <= 250 ms | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in fanout:
        v = row.values
        for step in v.get("steps") or [{}]:
            largest = v.get("largest_fanout_per_s")
            lines.append(
                f"| {row.spec.name} | {num(v.get('connected'))}/{num(v.get('n'))} | {num(step.get('rate'))} "
                f"| {num(step.get('deliveries_per_s'))} | {num(step.get('p50_ms'), 2)} / "
                f"{num(step.get('p99_ms'), 2)} | {num(step.get('missing'))} "
                f"| {num(step.get('server_cpu_us_per_delivery'))} | {num(step.get('client_cpu_percent'))} "
                f"| {num(largest)} deliveries/s at {num(v.get('largest_fanout_rate'))} msg/s "
                f"| {row.status} {row.note} |"
            )
    return [*lines, ""]


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    lines = [
        f"# make bench — {meta['started']}",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, Python {machine['python']}, "
        f"{machine['platform']}. Load average (1/5/15 min) before: {meta['load_average_before']}, "
        f"after: {meta['load_average_after']}. The generator (wrk) runs on the same machine.",
        "",
        f"Settings: {meta['settings']}.",
        "",
    ]
    throughput = [r for r in rows if r.spec.kind == "throughput"]
    if throughput:
        lines += throughput_table(throughput)
        lines += [
            "",
            f"x bare: req/s over the bare row's in this run. Server CPU: every process of the server "
            f"(nginx, gunicorn, log pipes) per request. ⚠: wrk itself above {CPU_LIMIT:g} % of a core — the "
            "row measures the generator as much as the server.",
            "",
        ]
        goals = meta.get("goals", {})
        lines += [
            f"Goals (issue 12): blueprint direct / bare = {num(goals.get('blueprint_direct_over_bare'), 2)} "
            f"by req/s, {num(goals.get('blueprint_direct_over_bare_by_cpu'), 2)} by CPU per request (goal >= "
            f"0.85); through nginx / direct = {num(goals.get('blueprint_nginx_over_direct'), 2)} by req/s, "
            f"{num(goals.get('blueprint_nginx_over_direct_by_cpu'), 2)} by CPU per request (goal >= 0.80).",
            "",
        ]
        unix = meta.get("unix_vs_tcp") or {}
        if unix:
            lines += [
                f"Unix socket vs TCP between nginx and gunicorn (blueprint-nginx-unix / blueprint-nginx): "
                f"{num(unix.get('rps_unix_over_tcp'), 2)} x the req/s; TCP costs "
                f"{num(unix.get('app_cpu_tcp_over_unix'), 2)} x the app's CPU per request and "
                f"{num(unix.get('server_cpu_tcp_over_unix'), 2)} x all server processes' (above 1: the "
                "socket is cheaper).",
                "",
            ]
        sampler = meta.get("sampler") or {}
        if sampler:
            lines += [
                f"The stack sampler beside the load (blueprint-nginx-sampled / blueprint-nginx): "
                f"{num(sampler.get('rps_sampled_over_unsampled'), 3)} x the req/s, "
                f"{num(sampler.get('server_cpu_unsampled_over_sampled'), 3)} x the server's CPU per request "
                f"(goal: both >= 0.98); the sampler itself used "
                f"{num(sampler.get('sampler_cpu_percent'), 2)} % of one CPU. One pair of rows cannot tell "
                "2 % from the host's noise; `python -m loadtest.bench.sampled` can (windows with and without "
                "the sampler in turns inside one wrk run, with an interval for the median).",
                "",
            ]
    lines += rooms_table(rows)
    lines += hop_table(meta.get("proxy_hops") or {})
    lines += capacity_tables(rows)
    return "\n".join(lines).rstrip() + "\n"


def hop_table(hops: dict[str, dict[str, Any]]) -> list[str]:
    """The same app behind nginx, HAProxy and Caddy: what the hop costs in CPU per request."""
    if not hops:
        return []
    lines = [
        "The proxy hop side by side (the same app and workers; CPU µs per request; hop = every process on "
        "the path through the front minus the app alone on its bind):",
        "",
        "| front | req/s | hop µs | the front's own µs | log pipes µs | the app's extra µs |",
        "|---|---|---|---|---|---|",
    ]
    for front, v in hops.items():
        lines.append(
            f"| {front} | {num(v.get('rps'))} | {num(v.get('hop_us'))} | {num(v.get('front_us'))} "
            f"| {num(v.get('log_pipes_us'))} | {num(v.get('app_extra_us'))} |"
        )
    return [*lines, ""]


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.spec.kind == "throughput" and r.status == Status.OK]
    names = [r.spec.name for r in measured] or ["(no throughput row)"]
    rps = [float(r.values.get("rps") or 0) for r in measured] or [0.0]
    cpu = [float(r.values.get("server_cpu_us_per_request") or 0) for r in measured] or [0.0]
    bound = [bool(r.values.get("generator_cpu_bound")) for r in measured] or [False]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 0.5 * len(names) + 2.2))
    for panel, values, label in ((left, rps, "requests/s"), (right, cpu, "server CPU µs per request")):
        bars = panel.barh(names, values, color=["#c77" if b else "#4a7" for b in bound])
        panel.invert_yaxis()
        panel.set_xlabel(label)
        panel.grid(axis="x", alpha=0.3)
        for bar, row in zip(bars, measured, strict=False):
            ratio = row.values.get("ratio_to_bare")
            text = f"{bar.get_width():,.0f}" + (f"  ({ratio:.2f}x bare)" if ratio and panel is left else "")
            panel.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text, va="center")
        panel.margins(x=0.35)
    right.set_yticks([])
    figure.suptitle(f"{title}  (red: wrk above {CPU_LIMIT:g} % CPU)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_report(report_dir: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    data = {**meta, "rows": [row.to_dict() for row in rows]}
    (report_dir / "bench.json").write_text(json.dumps(data, indent=2, default=str))
    (report_dir / "bench.md").write_text(markdown(rows, meta))
    plot(rows, report_dir / "bench.png", f"make bench {meta['started']}")
