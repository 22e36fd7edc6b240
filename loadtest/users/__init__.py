"""What every locustfile shares: the base users and the listeners that judge a run.

    from loadtest.users import ApiUser, WebSocketUser    # in a locustfile

Importing this package (any module of it) registers the listeners, once per process, so a locustfile that
uses these users gets the run summary and the CPU check. It imports locust and gevent: only Locust
processes import it (the runner, loadtest/runner/, never does).

Users: api.py (ApiUser over HTTP, failures naming the layer that answered), sockets.py (WebSocketUser and
its echo and ticker kinds). Listeners: options.py (per-run options from the LOCUST_* knobs), cpu.py
(Locust's own CPU), thresholds.py (the exit code and the summary file), clock.py (the run-time timer),
stack_tab.py (the web UI's Stack tab).
hooks.py: typed views of Locust's events.
"""

from loadtest.users import clock, cpu, stack_tab, thresholds  # noqa: F401  (registers their listeners)
from loadtest.users.api import ApiUser, describe_failure, judge
from loadtest.users.hooks import listener, report_sample
from loadtest.users.options import KNOBS, option
from loadtest.users.sockets import Closed, EchoRoundTrips, TickerPushes, WebSocketUser

__all__ = [
    "KNOBS",
    "ApiUser",
    "Closed",
    "EchoRoundTrips",
    "TickerPushes",
    "WebSocketUser",
    "describe_failure",
    "judge",
    "listener",
    "option",
    "report_sample",
]
