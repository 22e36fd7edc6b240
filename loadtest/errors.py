"""The root of every loadtest error. Each experiment derives its own (DrillError, BenchError, SweepError);
the command lines catch this one and print it as one line."""


class LoadtestError(Exception):
    """A problem the user can fix; the message is one line that says what and how."""
