"""The loop clock at the start of a run, so that Locust's --run-time is as long as asked."""

from __future__ import annotations

from typing import Any

import gevent
from locust import events
from locust.env import Environment

from loadtest.users.hooks import listener


@listener(events.init)
def refresh_loop_clock(environment: Environment, **_: Any) -> None:
    """gevent's loop caches "now" and importing the locustfiles does not refresh it, so Locust's --run-time
    timer would start in the past and end the run early by the import time (seconds on a busy machine)."""
    gevent.get_hub().loop.update_now()
