"""Free loopback ports, and the knobs a runtime needs set to them to run a stack beside others on one host."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick; another process may take it later)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def free_port_value(knob: str) -> str:
    """A free port as `knob` takes it: `host:port` for a bind address, else the number."""
    return f"{LOOPBACK}:{free_port()}" if knob.endswith("_BIND") else str(free_port())


def free_port_knobs(runtime: str) -> dict[str, str]:
    """Every port knob of a stack of this runtime, each on a free port: nothing collides with `make up`."""
    from deploy.stackctl import runtimes  # the runtimes use this module

    return runtimes.get(runtime).free_port_knobs()
