"""A locustfile for the tests only: a user that burns the Locust process's CPU, so the run must be flagged."""

import time

import gevent
from locust import User, constant, task

import loadtest.users  # noqa: F401  (registers the summary and CPU listeners)


class CpuHogUser(User):
    wait_time = constant(0)

    @task
    def burn(self) -> None:
        until = time.perf_counter() + 0.05
        while time.perf_counter() < until:
            pass
        gevent.sleep(0)
