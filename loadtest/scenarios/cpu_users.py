"""cpu — CPU-bound work in a `def` route (/api/cpu): throughput scales with worker processes, not users.

What to look at: requests/s stops growing once every worker's CPU is busy, and p95 then grows with the
users instead. Run it as `SCENARIO=loadtest/scenarios/cpu_users.py` (a locustfile path); docs/TUNING.md
sweeps WEB_CONCURRENCY with it.
"""

from locust import constant, run_single_user, task

from loadtest.users import ApiUser

WORK = 200_000  # iterations per request: about 20-30 ms of one core's Python time


class CpuUser(ApiUser):
    weight = 1
    wait_time = constant(0)

    @task
    def cpu(self) -> None:
        self.get_json(f"/api/cpu?work={WORK}", name="/api/cpu?work=[n]", expect="cpu_ms")


if __name__ == "__main__":
    from loadtest.stack import default_host

    CpuUser.host = default_host()
    run_single_user(CpuUser)
