"""What a sweep writes: results.csv, a plot per knob, index.html with the recommendation, sweep.json."""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.limits import CPU_LIMIT
from loadtest.status import Status
from loadtest.sweep.plan import METRICS, SUMMARY_FIELDS, Axis, Result
from service.settings import ToolInputs

DEFAULTS = ToolInputs()


@dataclass(frozen=True)
class Bounds:
    """What the recommendation requires: the ToolInputs rows sweep_max_fail_ratio and sweep_max_p95_ms."""

    max_fail_ratio: float = DEFAULTS.sweep_max_fail_ratio
    max_p95_ms: float = DEFAULTS.sweep_max_p95_ms  # 0 = twice the lowest p95 the sweep measured


DEFAULT_BOUNDS = Bounds()


def recommend(results: list[Result], bounds: Bounds) -> str:
    measured = [r for r in results if r.status == Status.OK]
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
    rule = f"failure ratio <= {bounds.max_fail_ratio:.1%}, {p95_text} and Locust CPU below {CPU_LIMIT:g} %"
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
                if r.status == Status.OK and r.metric(metric) is not None
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
    figure.suptitle(
        f"{axis.knob}: refused/error combinations have no point; circled = Locust CPU > {CPU_LIMIT:g} %"
    )
    figure.tight_layout(rect=(0, legend_room, 1, 0.96))
    figure.savefig(path, dpi=90)
    plt.close(figure)


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
tr.refused {{ color: #a33; }} tr.error {{ color: #a60; }} img {{ max-width: 100%; }}
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
