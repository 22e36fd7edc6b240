"""The server's side beside every load: a sampler that reads the stack a run targets once a second — each
worker's requests in flight, event-loop lag, requests/s, WebSockets, memory and CPU; workers that started
and ended and why; nginx's connections, requests/s and upstream time; answers by status and by the layer
that gave them — into `stack-series.jsonl` in the run's report directory (fields: loadtest/README.md), and
the charts drawn from it in report.html, the Locust web UI's Stack tab and each drill's timeline.

    from loadtest.sampler.sampler import SERIES_FILE, beside
    with beside(handle, report_dir / SERIES_FILE):
        ...  # the load

Modules: exposition.py (reading the platform's metrics), sources.py (where each runtime's numbers come
from), series.py (one sample from them), sampler.py (the thread), charts.py (the HTML; standard library
only, so that Locust processes, whose image has no deploy/, can draw the Stack tab). This file imports
nothing for the same reason.
"""
