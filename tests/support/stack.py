"""Real local stacks for the tests, started the one way every tool starts them (deploy/stackctl/stack.py): on
free ports, in their own run directory, on defaults + the test's knobs only; stopped after."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deploy.stackctl import local, stack
from deploy.stackctl.config import ROOT
from deploy.stackctl.ports import free_port_knobs

# UVICORN_WS_MAX_SIZE of the shared test stacks. An oversize frame this small reaches the app whole, in
# nginx's first write (one 4 KiB proxy buffer), so nothing is left unread when uvicorn closes with 1009:
# with bigger frames the kernel answers the unread rest with a reset, which can overtake the close frame.
SMALL_WS_MAX_SIZE = 2048


@dataclass
class Stack:
    """A local stack's inputs (run dir, the environment with its knobs) and, once up, its handle."""

    run_dir: Path
    env: dict[str, str]
    handle: stack.Handle | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['HTTP_PORT']}"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.env['NGINX_STATUS_PORT']}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def stackctl(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """The command line, for tests of what `make` users see."""
        return subprocess.run(
            [sys.executable, "-m", "deploy.stackctl", "--run-dir", str(self.run_dir), *args],
            cwd=ROOT,
            env={**self.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def up(self) -> None:
        self.handle = stack.start("local", run_dir=self.run_dir, base=self.env)

    def down(self) -> None:
        handle = self.handle or stack.attach(self.run_dir)
        if handle is not None:
            handle.stop()
        else:
            local.down(local.RunDir(self.run_dir), quiet=True)
        self.handle = None


def make_stack(run_dir: Path, **knobs: str) -> Stack:
    env = stack.isolated_base()
    env.update(
        RUNTIME="local",
        PROFILE="default",
        GUNICORN_LOG_LEVEL="warning",
        APP_LOG_LEVEL="warning",
        **free_port_knobs("local"),
    )
    env.update(knobs)
    return Stack(run_dir, env)


@contextmanager
def running(stack_: Stack) -> Iterator[Stack]:
    """The stack up for the duration of the block, and down afterwards even when the block fails."""
    stack_.up()
    try:
        yield stack_
    finally:
        stack_.down()
