"""Free ports for stacks beside each other: below the kernel's ephemeral range, where no outgoing
connection can take one between the pick and the stack's bind."""

from __future__ import annotations

import socket

from deploy.stackctl import ports


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == len(picked), "two knobs of one process never share a port"
    assert all(ports.PICK_FROM <= port < ports.ephemeral_start() for port in picked), picked
    for port in picked[:5]:
        with socket.socket() as listener:
            listener.bind((ports.LOOPBACK, port))


def test_a_port_something_is_bound_to_is_never_picked(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind((ports.LOOPBACK, 0))
        busy = taken.getsockname()[1]
        # the random picks land on the busy port twice, then on the ports above it
        picks = iter([busy, busy, *range(busy + 1, busy + 20)])
        monkeypatch.setattr(ports.random, "randrange", lambda start, stop: next(picks))
        monkeypatch.setattr(ports, "ephemeral_start", lambda: busy + 20)
        monkeypatch.setattr(ports, "PICK_FROM", busy)
        assert busy < ports.free_port() < busy + 20
