"""One real local stack (nginx + gunicorn, one worker) on free ports for every Locust test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import Stack, make_stack, running


@pytest.fixture(scope="session")
def loadtest_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker, so that the blocking route stalls everything beside it."""
    with running(make_stack(tmp_path_factory.mktemp("loadtest-stack"), WEB_CONCURRENCY="1")) as stack:
        yield stack
