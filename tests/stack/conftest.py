"""The local tier's shared stacks (tests/support/stack.py starts them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import SMALL_WS_MAX_SIZE, Stack, make_stack, running


@pytest.fixture(scope="session")
def one_worker_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker, so that what happens to 'the worker' is deterministic; a short app timeout."""
    stack_ = make_stack(
        tmp_path_factory.mktemp("one-worker"),
        WEB_CONCURRENCY="1",
        APP_REQUEST_TIMEOUT="2",
        UVICORN_WS_MAX_SIZE=str(SMALL_WS_MAX_SIZE),
    )
    with running(stack_):
        yield stack_


@pytest.fixture(scope="session")
def two_worker_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(make_stack(tmp_path_factory.mktemp("two-workers"), WEB_CONCURRENCY="2")) as stack_:
        yield stack_
