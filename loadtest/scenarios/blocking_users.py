"""blocking — the anti-pattern beside the slow route: `time.sleep` inside `async def` stalls its worker.

Both users run: SlowUser (imported) and BlockingUser. What to look at: the /api/slow row rises above
`--slow-delay` while /api/blocking runs, because every blocking call stops the event loop that should
wake the sleeping slow requests. Compare with `make loadtest SCENARIO=slow`.
"""

from locust import between, run_single_user, task

from loadtest.scenarios.slow_users import SlowUser
from loadtest.users import KNOBS, ApiUser, option

__all__ = ["BlockingUser", "SlowUser"]


class BlockingUser(ApiUser):
    weight = 1
    wait_time = between(0.1, 0.3)

    @task
    def blocking(self) -> None:
        delay = option(self.environment, "blocking_delay", KNOBS.locust_blocking_delay)
        self.get_json(f"/api/blocking?delay={delay}", name="/api/blocking?delay=[s]", expect="delay")


if __name__ == "__main__":
    from loadtest.stack import default_host

    BlockingUser.host = default_host()
    run_single_user(BlockingUser)
