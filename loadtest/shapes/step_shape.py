"""step — find the knee: `steps` equal stairs up to --users, each held for --run-time / steps.

Read the result in the report's charts (or reports/.../locust_stats_history.csv): the step where
requests/s stop rising while response times climb is the stack's capacity for this scenario.
"""

from loadtest.shapes import CommonOptionsShape, fraction


class StepShape(CommonOptionsShape):
    steps = 5

    def tick(self) -> tuple[int, float] | None:
        users, rate, seconds = self.plan()
        step = int(self.get_run_time() // (seconds / self.steps))
        if step >= self.steps:
            return None
        return fraction(users, (step + 1) / self.steps), rate
