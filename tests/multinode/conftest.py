"""Three swarm nodes in network namespaces with a registry, made once for the tier and removed after it,
also when a test or the start fails: deploy/multinode/nodes.sh up ... down. Skipped with the reason where
they cannot be made (not root, a tool missing, no base images); REQUIRE_MULTINODE=1 (set by .ci/run) turns
that into a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.multinode import Nodes, host_snapshot, require_multinode

# Fixed and short: a unix socket's path is at most 107 bytes. A run that crashed left it; down removes it.
STATE_DIR = Path("/tmp/blueprint-multinode-test")


@pytest.fixture(scope="session")
def host_before() -> dict[str, list[str]]:
    """The host as the tier found it, before any node exists."""
    require_multinode()
    nodes = Nodes(STATE_DIR)
    if STATE_DIR.exists():
        nodes.run("down", timeout=300)
    return host_snapshot(nodes)


@pytest.fixture(scope="session")
def nodes(host_before: dict[str, list[str]]) -> Iterator[Nodes]:
    made = Nodes(STATE_DIR)
    try:
        made.must("up")
        bases = [os.environ[name] for name in ("PYTHON_IMAGE", "NGINX_IMAGE", "REDIS_IMAGE")]
        made.must("load-images", *bases, timeout=300)  # the images the stack builds FROM, offline
        yield made
    finally:
        made.run("down", timeout=300)
