"""spike — a tenth of --users, then all of them at once, then back: does the stack recover?

Timeline (share of --run-time): 40 % baseline, 20 % spike (spawned as fast as Locust can), 40 % baseline.
Look for failures during the spike (which layer answered: uvicorn 503, nginx 502/504) and whether
response times return to the baseline afterwards.
"""

from loadtest.shapes import CommonOptionsShape, fraction


class SpikeShape(CommonOptionsShape):
    default_seconds = 120.0

    def tick(self) -> tuple[int, float] | None:
        users, rate, seconds = self.plan()
        share = self.get_run_time() / seconds
        if share >= 1:
            return None
        baseline = fraction(users, 0.1)
        if 0.4 <= share < 0.6:
            return users, max(rate, float(users))
        return baseline, max(rate, float(users))
