"""sync — a plain `def` route: it runs in the worker's threadpool (APP_THREADPOOL_TOKENS, 40 by default).

What to look at: below 40 concurrent requests per worker /api/sync takes `--slow-delay`; above, requests
queue for a thread and the row climbs in steps of the delay. Raise the users past 40 x WEB_CONCURRENCY.
"""

from locust import between, run_single_user, task

from loadtest.users import KNOBS, ApiUser, option


class SyncUser(ApiUser):
    weight = 1
    wait_time = between(0, 0.1)

    @task
    def sync(self) -> None:
        delay = option(self.environment, "slow_delay", KNOBS.locust_slow_delay)
        self.get_json(f"/api/sync?delay={delay}", name="/api/sync?delay=[s]", expect="threadpool_tokens")


if __name__ == "__main__":
    from loadtest.stack import default_host

    SyncUser.host = default_host()
    run_single_user(SyncUser)
