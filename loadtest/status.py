"""The status of one row of `make drill`, `make bench` or `make sweep`: one vocabulary for all three, as their
tables, progress lines, JSON and CSV files print it.

A drill ends passed, failed, error, skipped or "no such event" (the server it runs against has no mechanism
for it); a bench row ok, error or skipped; a sweep combination ok, error or refused. Each starts pending.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"  # not run yet
    PASSED = "passed"  # ran and kept its bound (a drill lost at most what it may)
    FAILED = "failed"  # ran and broke its bound (a drill lost more)
    OK = "ok"  # ran and was measured; nothing to pass or fail (a bench row, a sweep combination)
    ERROR = "error"  # could not run, or was interrupted: the row says why
    SKIPPED = "skipped"  # not run: this machine lacks what it needs (a Docker engine, a server version)
    REFUSED = "refused"  # not run: its knobs break an ordering rule of `make check` (a sweep combination)
    NO_SUCH_EVENT = "no such event"  # not run: the server has no mechanism for the drill's event

    @property
    def ran(self) -> bool:
        """Ran to the end, so its numbers stand."""
        return self in (Status.PASSED, Status.FAILED, Status.OK)
