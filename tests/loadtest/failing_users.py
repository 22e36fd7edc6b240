"""A locustfile for the tests only: every request fails (422: the delay is above APP_MAX_DELAY)."""

from locust import constant, task

from loadtest.users import ApiUser


class FailingUser(ApiUser):
    wait_time = constant(0.2)

    @task
    def too_slow(self) -> None:
        self.get_json("/api/slow?delay=100000", name="/api/slow?delay=[too big]")
