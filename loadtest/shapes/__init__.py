"""Load shapes. Each file holds one shape (Locust uses the first shape it finds, so never load two); add one
to a run with `make loadtest SHAPE=step|spike|soak` or pick it in the web UI. Every shape reads the usual
options: --users is the peak, --spawn-rate the ramp speed, --run-time the whole duration."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from locust import LoadTestShape


class CommonOptionsShape(LoadTestShape):
    abstract = True
    use_common_options = True
    default_seconds = 300.0

    if TYPE_CHECKING:

        def get_run_time(self) -> float:
            """Seconds since the shape started: locust's own method, which it leaves unannotated."""

    def plan(self) -> tuple[int, float, float]:
        """(peak users, spawn rate, duration in seconds) from --users, --spawn-rate and --run-time."""
        options = self.runner.environment.parsed_options if self.runner else None
        users = int(getattr(options, "num_users", None) or 10)
        rate = float(getattr(options, "spawn_rate", None) or 1)
        seconds = float(getattr(options, "run_time", None) or self.default_seconds)
        return max(1, users), max(0.1, rate), seconds


def fraction(users: int, share: float) -> int:
    return max(1, math.ceil(users * share))
