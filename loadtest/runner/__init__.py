"""`make loadtest` / `make loadtest-ui`: Locust against the stack, and the summary of each run.

    python -m loadtest.runner --scenario mixed --users 20 --spawn-rate 5 --run-time 30s
    python -m loadtest.runner --ui                      # web UI with a scenario picker

Locust runs in subprocesses (it monkey-patches the interpreter with gevent), so importing this package is
safe anywhere: it never imports locust or gevent. What runs inside Locust is loadtest/users/.

plan.py: the scenarios, shapes and run time, checked before anything starts; trust.py: the URL a run
targets and the CA its clients trust; processes.py: the Locust processes and their environment;
summary.py: what a run measured and its verdicts; report.py: the files and the console table; run.py: one
headless run; ui.py: the web UI; cli.py: the command line.
"""

from loadtest.runner.cli import main
from loadtest.runner.plan import SCENARIOS, SHAPES, locustfiles, parse_run_time
from loadtest.runner.run import run_headless
from loadtest.runner.summary import Summary
from loadtest.runner.ui import run_ui

__all__ = [
    "SCENARIOS",
    "SHAPES",
    "Summary",
    "locustfiles",
    "main",
    "parse_run_time",
    "run_headless",
    "run_ui",
]
