"""The charts of a stack series (`stack-series.jsonl`), drawn in the browser by a small inline script as
SVG: no library, no CDN, so a report opens anywhere, offline. The same charts go into report.html, each
sweep combination's report, the Locust web UI's Stack tab (live) and, fewer of them, each drill's
timeline. Standard library only: the Locust processes draw the Stack tab with it.

Python turns samples into chart specs (`specs`); the script only draws them:
    {"start": t0, "end": t1, "charts": [{"title", "unit", "step", "series": [{"name", "points": [[t, v]]}],
     "markers": [{"t", "label", "kind": "start" | "end" | "event"}]}], "findings": ["..."]}
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Sample = dict[str, Any]
Point = list[float | None]

LAG_FINDING_MS = 100.0  # a worker whose loop lagged at least this long is named in the findings


def rate_points(samples: Sequence[Sample], count: Any) -> list[Point]:
    """Per-second rates of a per-sample count, over the time between samples."""
    points: list[Point] = []
    for before, sample in itertools.pairwise(samples):
        span = sample["t"] - before["t"]
        if span > 0:
            points.append([sample["t"], round(count(sample) / span, 2)])
    return points


def per_worker(samples: Sequence[Sample], field: str) -> list[dict[str, Any]]:
    found: dict[str, list[Point]] = {}
    for sample in samples:
        present = set()
        for worker in sample.get("workers", []):
            present.add(worker["id"])
            found.setdefault(worker["id"], []).append([sample["t"], worker.get(field)])
        for wid, points in found.items():
            if wid not in present and points and points[-1][1] is not None:
                points.append([sample["t"], None])  # the line ends where the worker's series went
    return [{"name": f"worker {wid}", "points": points} for wid, points in found.items()]


def worker_markers(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    markers = []
    for sample in samples:
        for started in sample.get("started", []):
            markers.append({"t": started["at"], "label": f"worker {started['id']} started", "kind": "start"})
        for ended in sample.get("ended", []):
            label = f"worker {ended['id']} ended: {ended['reason']}"
            markers.append({"t": ended["at"], "label": label, "kind": "end"})
    return markers


def keyed_rates(samples: Sequence[Sample], keys: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name, "points": rate_points(samples, count)} for name, count in keys]


def layer_keys(samples: Sequence[Sample]) -> list[tuple[str, Any]]:
    pairs = sorted(
        {(layer, status) for s in samples for layer, c in s.get("by_layer", {}).items() for status in c}
    )
    return [
        (
            f"{layer} {status}",
            lambda s, layer=layer, status=status: s.get("by_layer", {}).get(layer, {}).get(status, 0),
        )
        for layer, status in pairs
    ]


def status_keys(samples: Sequence[Sample]) -> list[tuple[str, Any]]:
    statuses = sorted({status for s in samples for status in s.get("answers", {})})
    return [(status, lambda s, status=status: s.get("answers", {}).get(status, 0)) for status in statuses]


def nginx_series(
    samples: Sequence[Sample], fields: Iterable[str], inner: str | None = None
) -> list[dict[str, Any]]:
    series = []
    for field in fields:
        points: list[Point] = []
        for sample in samples:
            values = sample.get("nginx", {})
            values = values.get(inner, {}) if inner else values
            if field in values:
                points.append([sample["t"], values[field]])
        series.append({"name": field, "points": points})
    return series


def has_points(series: list[dict[str, Any]], nonzero: bool = False) -> bool:
    return any(p[1] is not None and (p[1] or not nonzero) for s in series for p in s["points"])


def findings(samples: Sequence[Sample]) -> list[str]:
    """One line per worker whose event loop lagged LAG_FINDING_MS or more: the worst second and when; one
    per worker that ended, and why."""
    worst: dict[str, tuple[float, float, bool]] = {}
    for sample in samples:
        for worker in sample.get("workers", []):
            lag = worker.get("lag_max_ms") or 0.0
            if lag >= LAG_FINDING_MS and lag > worst.get(worker["id"], (0.0, 0.0, False))[0]:
                worst[worker["id"]] = (lag, sample["t"], bool(worker.get("stalled")))
    lines = [
        f"worker {wid}: event loop {'stalled' if stalled else 'lagged'} {lag:.0f} ms (at {clock(t)})"
        for wid, (lag, t, stalled) in sorted(worst.items(), key=lambda item: -item[1][0])
    ]
    for marker in worker_markers(samples):
        if marker["kind"] == "end":
            lines.append(f"{marker['label']} (at {clock(marker['t'])})")
    return lines


def clock(t: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(t))


def specs(
    samples: Sequence[Sample],
    client: Sequence[tuple[float, float, float]] = (),
    events: Sequence[tuple[float, str]] = (),
) -> dict[str, Any]:
    """Every chart of a run. `client`: Locust's own (t, requests/s, failures/s); `events`: (t, label) of
    what the run did on purpose (a drill's event)."""
    samples = [s for s in samples if "t" in s]
    markers = worker_markers(samples) + [{"t": t, "label": label, "kind": "event"} for t, label in events]
    requests = [
        {"name": "nginx", "points": [[s["t"], s["nginx"].get("rps")] for s in samples if "nginx" in s]}
    ]
    requests += per_worker(samples, "rps")
    if client:
        requests.append({"name": "Locust (client)", "points": [[t, rps] for t, rps, _ in client]})
        requests.append({"name": "Locust failures", "points": [[t, fails] for t, _, fails in client]})
    charts: list[dict[str, Any]] = [
        {"title": "Requests/s", "series": requests},
        {"title": "Event-loop lag, largest per second (ms)", "series": per_worker(samples, "lag_max_ms")},
        {"title": "Requests in flight, per worker", "series": per_worker(samples, "in_flight")},
        {
            "title": "Workers alive",
            "step": True,
            "series": [{"name": "workers", "points": [[s["t"], s.get("workers_alive")] for s in samples]}],
        },
        {"title": "CPU, per worker (% of one CPU)", "series": per_worker(samples, "cpu_percent")},
        {"title": "Resident memory, per worker (MiB)", "series": per_worker(samples, "rss_mb")},
        {
            "title": "WebSockets open, per worker",
            "series": per_worker(samples, "websockets"),
            "nonzero": True,
        },
        {
            "title": "nginx connections",
            "series": nginx_series(samples, ("active", "reading", "writing", "waiting")),
        },
        {
            "title": "Upstream time as nginx saw it (ms)",
            "series": nginx_series(samples, ("p50", "p99", "max"), "upstream_ms"),
        },
        {
            "title": "Answers/s by status (nginx's access log)",
            "series": keyed_rates(samples, status_keys(samples)),
        },
        {
            "title": "Errors/s by the layer that answered",
            "series": keyed_rates(samples, layer_keys(samples)),
            "nonzero": True,
        },
    ]
    shown = [c for c in charts if has_points(c["series"], c.pop("nonzero", False))]
    for chart in shown:
        chart["markers"] = markers
    return {
        "start": samples[0]["t"] if samples else 0,
        "end": samples[-1]["t"] if samples else 0,
        "charts": shown,
        "findings": findings(samples),
    }


def timeline_specs(
    samples: Sequence[Sample], closes: Sequence[tuple[float, str]], events: Sequence[tuple[float, str]]
) -> dict[str, Any]:
    """A drill's timeline: requests/s and failures/s through nginx, WebSocket closes by code (the drill's
    clients: (t, code)), workers alive; the worker starts and ends and the drill's event marked."""
    samples = [s for s in samples if "t" in s]
    markers = worker_markers(samples) + [{"t": t, "label": label, "kind": "event"} for t, label in events]

    def failures(sample: Sample) -> int:
        return sum(n for status, n in sample.get("answers", {}).items() if not status.startswith(("2", "3")))

    codes = sorted({code for _, code in closes})
    close_series = []
    for code in codes:
        per_second: dict[int, int] = {}
        for t, c in closes:
            if c == code:
                per_second[int(t)] = per_second.get(int(t), 0) + 1
        start = int(samples[0]["t"]) if samples else min(per_second)
        end = int(samples[-1]["t"]) if samples else max(per_second)
        points: list[Point] = [[float(second), per_second.get(second, 0)] for second in range(start, end + 1)]
        close_series.append({"name": f"close {code}", "points": points})
    charts: list[dict[str, Any]] = [
        {
            "title": "Requests/s and failures/s through nginx",
            "series": [
                {
                    "name": "requests/s",
                    "points": [[s["t"], s["nginx"].get("rps")] for s in samples if "nginx" in s],
                },
                {"name": "failures/s (not 2xx/3xx)", "points": rate_points(samples, failures)},
            ],
        },
        {"title": "WebSocket closes/s by code (the drill's clients)", "series": close_series},
        {
            "title": "Workers alive",
            "step": True,
            "series": [{"name": "workers", "points": [[s["t"], s.get("workers_alive")] for s in samples]}],
        },
        {"title": "Event-loop lag, largest per second (ms)", "series": per_worker(samples, "lag_max_ms")},
    ]
    shown = [c for c in charts if has_points(c["series"])]
    for chart in shown:
        chart["markers"] = markers
    return {
        "start": samples[0]["t"] if samples else 0,
        "end": samples[-1]["t"] if samples else 0,
        "charts": shown,
        "findings": findings(samples),
    }


def as_script_json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


HERE = Path(__file__).parent
RENDERER = (HERE / "charts.js").read_text()
STYLE = (HERE / "charts.css").read_text()


NOTE = (
    "Sampled once a second beside the load (loadtest/sampler): per worker, from the platform's metrics, and "
    "nginx's stub_status and access log. Markers: green a worker started, red one ended (the reason the "
    "gunicorn master recorded), blue dashed what the run did on purpose. A lag of B ms means a timer due "
    "then fired B ms late: a blocking call of B ms shows as B less up to one APP_LOOP_LAG_INTERVAL."
)


def charts_div(chart_specs: dict[str, Any], element_id: str = "") -> str:
    ident = f' id="{html.escape(element_id)}"' if element_id else ""
    return (
        f'<div class="stack-charts"{ident}><script type="application/json" class="stack-specs">'
        f"{as_script_json(chart_specs)}</script></div>"
    )


def knobs_table(settings: dict[str, Any]) -> str:
    """Every knob and its value, folded under a summary line."""
    rows = "".join(
        f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(str(value))}</td></tr>"
        for name, value in sorted(settings.items())
    )
    if not rows:
        return ""
    return (
        f"<details><summary>The knobs the stack runs with ({len(settings)})</summary>"
        f'<table class="stack-knobs">{rows}</table></details>'
    )


def section(chart_specs: dict[str, Any], heading: str, note: str = NOTE, extra: str = "") -> str:
    """A self-contained block for the end of a page: style, heading, charts, renderer."""
    return (
        f'<section class="stack-section"><style>{STYLE}</style><h2>{html.escape(heading)}</h2>'
        f'<p class="stack-note">{html.escape(note)}</p>{charts_div(chart_specs)}{extra}'
        f"<script>{RENDERER}</script></section>"
    )


def embed(page: str, block: str) -> str:
    """`page` with `block` at the end of its body."""
    at = page.rfind("</body>")
    return page[:at] + block + page[at:] if at >= 0 else page + block
