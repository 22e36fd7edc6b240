"""The one map from a runtime's name (RUNTIME=...) to its implementation of runtime.Runtime."""

from __future__ import annotations

from deploy.stackctl.docker import Docker
from deploy.stackctl.local import Local
from deploy.stackctl.runtime import Name, Runtime
from deploy.stackctl.swarm import Swarm
from service.settings import ConfigError

RUNTIMES: dict[Name, Runtime] = {"local": Local(), "docker": Docker(), "swarm": Swarm()}
# RUNTIME=auto: the first of these that is available here; never swarm (it changes the engine).
AUTO: tuple[Name, ...] = ("docker", "local")


def resolve(requested: str) -> Name:
    """RUNTIME's value as a runtime's name: auto resolved, anything unknown refused in one line."""
    if requested == "auto":
        return next((name for name in AUTO if RUNTIMES[name].available()), AUTO[-1])
    for name in RUNTIMES:
        if requested == name:
            return name
    raise ConfigError(f"RUNTIME={requested!r}: choose one of auto, {', '.join(RUNTIMES)}")


def get(name: str) -> Runtime:
    return RUNTIMES[resolve(name)]
