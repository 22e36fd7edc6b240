"""soak — ramp to --users at --spawn-rate and hold them for the whole --run-time (default 30 min).

Long runs show what short ones cannot: memory or file-descriptor growth, worker recycling
(GUNICORN_MAX_REQUESTS: WebSockets see 1012 and reconnect), and idle WebSockets cut by a proxy timeout.
"""

from loadtest.shapes import CommonOptionsShape


class SoakShape(CommonOptionsShape):
    default_seconds = 1800.0

    def tick(self) -> tuple[int, float] | None:
        users, rate, seconds = self.plan()
        if self.get_run_time() >= seconds:
            return None
        return users, rate
