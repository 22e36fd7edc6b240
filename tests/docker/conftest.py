"""The compose stack on a real Docker engine: images built once, one isolated compose project for the tier.

No engine reachable: the tier is skipped with the reason. REQUIRE_DOCKER=1 (set by .ci/run) turns that into
a failure. Build inputs come from the environment as for `make up`: PYTHON_IMAGE, NGINX_IMAGE, OFFLINE.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.stackctl import stack as stackctl
from tests.support.docker import BUILD_TIMEOUT, DockerStack, require_engine, stack_environment


@pytest.fixture(scope="package")
def docker_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerStack]:
    require_engine()
    stack = DockerStack(stack_environment())
    built = stack.stackctl("images", timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, f"building the images failed: {built.stderr[-3000:]}"
    try:
        stack.handle = stackctl.start("docker", run_dir=tmp_path_factory.mktemp("docker"), base=stack.env)
        yield stack
    finally:
        stack.compose("--profile", "loadtest", "down", "--remove-orphans", "--timeout", "5")


@pytest.fixture(scope="package")
def one_worker_stack(docker_stack: DockerStack) -> DockerStack:
    """The name the through-nginx tests of tests/stack ask for: here, the compose stack (one worker)."""
    return docker_stack
