"""slow — the async slow route: `await asyncio.sleep(delay)`, so one worker holds many requests at once.

What to look at: the /api/slow row stays at about `--slow-delay` however many users run (up to
UVICORN_LIMIT_CONCURRENCY per worker); the app answers how many were in flight on its worker.
"""

from locust import between, run_single_user, task

from loadtest.users import KNOBS, ApiUser, option


class SlowUser(ApiUser):
    weight = 2
    wait_time = between(0, 0.1)

    @task
    def slow(self) -> None:
        delay = option(self.environment, "slow_delay", KNOBS.locust_slow_delay)
        self.get_json(f"/api/slow?delay={delay}", name="/api/slow?delay=[s]", expect="concurrent")


if __name__ == "__main__":
    from loadtest.stack import default_host

    SlowUser.host = default_host()
    run_single_user(SlowUser)
