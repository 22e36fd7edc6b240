"""The errors of the stack tooling: each is a problem the user can fix, said in one line."""

from __future__ import annotations

from pathlib import Path


class StackError(Exception):
    """A problem the user can fix; the message is one line that says how."""


class AlreadyRunning(StackError):
    def __init__(self, url: str, run_dir: Path) -> None:
        super().__init__(
            f"stack already running at {url} (run dir {run_dir}); `make down` first to restart it"
        )
        self.url = url
