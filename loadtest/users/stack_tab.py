"""The web UI's Stack tab: the stack's side of the run, live, beside Locust's own tabs.

Through Locust's documented extension points (its examples/extend_web_ui.py): an extended tab whose table
(one row per app worker: in flight, requests/s, event-loop lag, WebSockets, memory, CPU) rides on the
`/stats/requests` answers the UI polls anyway, and Flask routes on `environment.web_ui.app`: `/stack/view`,
the charts of loadtest/sampler/charts.py on Locust's timeline (its own requests/s beside the stack's)
with the knobs the stack runs with, redrawn every 2 s from `/stack/charts`; `/stack/tab.js`, added to the
index page, shows that view at the top of the Stack tab. The sampler itself runs in the runner
(loadtest/runner/ui.py) and writes the series file this reads (`--stack-series`): no sampling in Locust.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment

from loadtest.sampler import charts
from loadtest.users.hooks import listener
from loadtest.users.options import option

TAB = "stack"
COLUMNS = [
    ("id", "Worker"),
    ("in_flight", "In flight"),
    ("rps", "Requests/s"),
    ("lag_max_ms", "Loop lag max (ms)"),
    ("lag_p99_ms", "Loop lag p99 (ms)"),
    ("stalled", "Stalled now"),
    ("websockets", "WebSockets"),
    ("rss_mb", "RSS (MiB)"),
    ("cpu_percent", "CPU %"),
    ("up_s", "Up (s)"),
]
TAB_SCRIPT = """(function () {
  // Shows the stack's charts (./stack/view) above the Stack tab's worker table while that tab is open.
  function place() {
    var open = new URLSearchParams(window.location.search).get("tab") === "stack";
    var frame = document.getElementById("stack-view");
    if (!open) { if (frame) frame.remove(); return; }
    if (frame && document.body.contains(frame)) return;
    var table = document.querySelector(".MuiTableContainer-root");
    if (!table || !table.parentNode) return;
    frame = document.createElement("iframe");
    frame.id = "stack-view";
    frame.title = "The stack's side";
    frame.src = "./stack/view";
    frame.style.cssText = "width:100%;height:2300px;border:0;display:block";
    table.parentNode.insertBefore(frame, table);
  }
  window.setInterval(place, 500);
})();
"""
POLL_SCRIPT = """(function () {
  var box = document.getElementById("stack-live");
  function poll() {
    fetch("./charts").then(function (r) { return r.json(); })
      .then(function (specs) { window.drawStackCharts(box, specs); })
      .catch(function (error) { box.setAttribute("data-error", String(error)); });
  }
  poll();
  window.setInterval(poll, 2000);
})();
"""


def read_samples(path: Path) -> list[dict[str, Any]]:
    samples = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            samples.append(json.loads(line))
        except ValueError:
            continue  # the line being written
    return samples


def client_history(environment: Environment) -> list[tuple[float, float, float]]:
    runner = environment.runner
    if runner is None:
        return []
    found = []
    for entry in runner.stats.history:
        try:
            t = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")).timestamp()
            found.append((t, float(entry["current_rps"][1]), float(entry["current_fail_per_sec"][1])))
        except (KeyError, ValueError, TypeError, IndexError):
            continue
    return found


def worker_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last sample's workers, one row each (the tab's table)."""
    rows = []
    for worker in samples[-1].get("workers", []) if samples else []:
        row = {key: worker.get(key) for key, _ in COLUMNS}
        row["stalled"] = "yes" if worker.get("stalled") else ""
        rows.append(row)
    return rows


def knobs(path: str) -> dict[str, Any]:
    try:
        settings = json.loads(Path(path).read_text()).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return dict(settings) if isinstance(settings, dict) else {}


def view_page(settings_path: str) -> str:
    settings = knobs(settings_path)
    table = charts.knobs_table(settings)
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Stack</title>'
        f"<style>{charts.STYLE}</style></head><body>"
        '<section class="stack-section"><h2>The stack\'s side, live</h2>'
        f'<p class="stack-note">{charts.NOTE}</p><div class="stack-charts" id="stack-live"></div>{table}'
        f"</section><script>{charts.RENDERER}</script><script>{POLL_SCRIPT}</script></body></html>"
    )


@listener(events.init)
def add_stack_tab(environment: Environment, **_: Any) -> None:
    web_ui = environment.web_ui
    series = option(environment, "stack_series", "")
    if web_ui is None or web_ui.app is None or not series:
        return
    from flask import Response, request

    series_path = Path(series)
    settings_path = option(environment, "stack_settings", "")
    web_ui.template_args["extended_tabs"] = [{"title": "Stack", "key": TAB}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB, "structure": [{"key": key, "title": title} for key, title in COLUMNS]}
    ]
    app = web_ui.app

    @app.after_request
    def extend(response: Response) -> Response:
        if request.path == "/stats/requests" and response.is_json:
            rows = worker_rows(read_samples(series_path))
            data = {**(response.get_json() or {}), "extended_stats": [{"key": TAB, "data": rows}]}
            response.set_data(json.dumps(data))
        elif request.path == "/" and response.mimetype == "text/html":
            page = response.get_data(as_text=True)
            response.set_data(page.replace("</body>", '<script src="./stack/tab.js"></script></body>', 1))
        return response

    @app.route("/stack/tab.js")
    def stack_tab_script() -> Response:
        return Response(TAB_SCRIPT, mimetype="application/javascript")

    @app.route("/stack/view")
    def stack_view() -> Response:
        return Response(view_page(settings_path), mimetype="text/html")

    @app.route("/stack/charts")
    def stack_charts() -> Response:
        specs = charts.specs(read_samples(series_path), client=client_history(environment))
        return Response(json.dumps(specs), mimetype="application/json")
