"""Free loopback ports, and the knobs a runtime needs set to them to run a stack beside others on one host."""

from __future__ import annotations

import socket

from service.settings import unix_socket_path

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


def split_bind(bind: str) -> tuple[str, int]:
    host, port = bind.rsplit(":", 1)
    return (host or LOOPBACK).strip("[]"), int(port)


def bind_in_use(bind: str) -> bool:
    """Whether something accepts connections at a gunicorn bind: host:port, or unix:/path."""
    path = unix_socket_path(bind)
    if path is None:
        return port_in_use(*split_bind(bind))
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(path) == 0


def free_port_value(knob: str) -> str:
    """A free port as `knob` takes it: `host:port` for a bind address, else the number."""
    return f"{LOOPBACK}:{free_port()}" if knob.endswith("_BIND") else str(free_port())


def free_port_knobs(runtime: str) -> dict[str, str]:
    """Every port knob of a stack of this runtime, each on a free port: nothing collides with `make up`."""
    from deploy.stackctl import runtimes  # the runtimes use this module

    return runtimes.get(runtime).free_port_knobs()
