"""Real stacks for the tests: `stackctl up` on free ports with its own run directory, torn down after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    run_dir: Path
    env: dict[str, str]

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
        return subprocess.run(
            [sys.executable, "-m", "deploy.stackctl", "--run-dir", str(self.run_dir), *args],
            cwd=ROOT,
            env={**self.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def up(self) -> None:
        result = self.stackctl("up")
        assert result.returncode == 0, result.stdout + result.stderr

    def down(self) -> None:
        self.stackctl("down")


def make_stack(run_dir: Path, **knobs: str) -> Stack:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APP_", "GUNICORN_", "UVICORN_", "NGINX_", "COMPOSE_", "LOCUST_"))
        and k != "ALLOW_UNSAFE_CONFIG"  # a test that breaks a rule on purpose passes it explicitly
    }
    env.update(
        RUNTIME="local",
        PROFILE="default",
        HTTP_PORT=str(free_port()),
        NGINX_STATUS_PORT=str(free_port()),
        GUNICORN_BIND=f"127.0.0.1:{free_port()}",
        GUNICORN_LOG_LEVEL="warning",
        APP_LOG_LEVEL="warning",
    )
    env.update(knobs)
    return Stack(run_dir, env)


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """The stack up for the duration of the block, and down afterwards even when the block fails."""
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def one_worker_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker, so that what happens to 'the worker' is deterministic; a short app timeout."""
    stack = make_stack(
        tmp_path_factory.mktemp("one-worker"),
        WEB_CONCURRENCY="1",
        APP_REQUEST_TIMEOUT="2",
        UVICORN_WS_MAX_SIZE="16384",
    )
    with running(stack):
        yield stack


@pytest.fixture(scope="session")
def two_worker_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(make_stack(tmp_path_factory.mktemp("two-workers"), WEB_CONCURRENCY="2")) as stack:
        yield stack
