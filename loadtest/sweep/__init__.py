"""`make sweep`: run the stack once per combination of knob values, load it, and report what each did.

    python -m loadtest.sweep --sweep 'WEB_CONCURRENCY=1,2,4 APP_THREADPOOL_TOKENS=40,200' \\
        --scenario http --users 50 --run-time 20s

For every combination of the SWEEP values (their cartesian product): the ordering rules of `make check`
with those values — a combination they refuse is recorded with the rule it breaks and not run — else a
fresh stack with those values on free ports (either runtime), the Locust scenario headless with thresholds
off, the stack stopped. It writes reports/sweep-<timestamp>/: results.csv (one row per combination),
index.html (the table, a plot of each metric against each knob, the recommendation) and the PNGs.

plan.py parses and expands the axes, run.py runs the combinations, report.py writes the report.
"""

from deploy.stackctl.config import KNOBS
from loadtest.sweep.cli import main
from loadtest.sweep.plan import Axis, Load, Result, SweepError, combinations, parse_sweep
from loadtest.sweep.report import Bounds, recommend, write_report
from loadtest.sweep.run import refused_rules, run_combination, run_sweep

__all__ = [
    "KNOBS",
    "Axis",
    "Bounds",
    "Load",
    "Result",
    "SweepError",
    "combinations",
    "main",
    "parse_sweep",
    "recommend",
    "refused_rules",
    "run_combination",
    "run_sweep",
    "write_report",
]
