"""Free loopback ports, and the knobs a runtime needs set to them to run a stack beside others on one host."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from service.settings import unix_socket_path

LOOPBACK = "127.0.0.1"
# Free ports are picked below the kernel's ephemeral range: the kernel's own pick (bind to port 0) comes
# from that range, where any outgoing connection (nginx to an app, a test's client) may take the port before
# the stack binds it ("Address already in use" in CI). Services' usual ports are below this.
PICK_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
TRIES = 200
handed_out: set[int] = set()  # by this process: two knobs never get the same port


def ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A TCP port nothing is bound to right now, below the ephemeral range (another process may still take
    it later, but no outgoing connection will); the kernel's pick when that range has none free."""
    top = ephemeral_start()
    for _ in range(TRIES if top > PICK_FROM else 0):
        port = random.randrange(PICK_FROM, top)
        if port in handed_out:
            continue
        with socket.socket() as probe:  # no SO_REUSEADDR: a port in TIME_WAIT counts as taken too
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
        handed_out.add(port)
        return port
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
