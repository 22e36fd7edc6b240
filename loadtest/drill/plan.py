"""What `make drill` runs: the drill names, the load parameters (checked before anything starts) and the
row each drill fills in."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from deploy.stackctl import servers
from loadtest.errors import LoadtestError
from loadtest.status import Status
from service.settings import ToolInputs

DEFAULTS = ToolInputs()
FLOOR_RATE = 1000.0
"""Requests/s through nginx below which a drill proves little: its row says so (the verdict stands)."""


class DrillError(LoadtestError):
    """Bad drill input or a missing tool; the message is one line naming the variable and the value."""


@dataclass(frozen=True)
class LoadParams:
    """The load every drill runs under; each field is set from a ToolInputs row (cli.py: LOAD, TARGETS)."""

    seconds: float = DEFAULTS.drill_seconds  # at least this long per drill, the event in the first half
    threads: int = DEFAULTS.wrk_threads
    connections: int = DEFAULTS.wrk_connections  # each holds one request in flight at a time
    websockets: int = DEFAULTS.drill_websockets  # held clients on ws_path
    # Members of the demo's rooms (loadtest/rooms.py) over ROOMS rooms; none for another APP_MODULE.
    room_members: int = DEFAULTS.drill_room_members
    room_rate: float = DEFAULTS.drill_room_rate  # messages/s per room
    rate: float = DEFAULTS.drill_rate  # a cap in requests/s over all connections; 0 = as fast as wrk goes
    short: bool = False  # seconds-long drills and short graceful timeouts, for tests
    strict: bool = False  # every drill is allowed to lose nothing, the lossy ones too
    post: str = DEFAULTS.drill_post  # what wrk POSTs body to
    body: str = DEFAULTS.drill_body
    get: str = DEFAULTS.drill_get  # "": POSTs only
    ws_path: str = DEFAULTS.drill_ws  # an echoing WebSocket; "": none

    def delay_ms(self) -> int:
        """wrk's per-request pause on each connection that caps the total rate at `rate`."""
        return math.ceil(1000 * self.connections / self.rate) if self.rate else 0

    @property
    def sockets(self) -> int:
        """WebSocket clients held: none without a path."""
        return self.websockets if self.ws_path else 0

    def describe(self) -> str:
        rate = f"capped at {self.rate:g} req/s" if self.rate else "as fast as wrk goes"
        mode = ", short mode" if self.short else ""
        requests = f"POST {self.post}" + (f" + GET {self.get}" if self.get else "")
        sockets = f"{self.sockets} WebSockets on {self.ws_path} (echo)" if self.sockets else "no WebSockets"
        rooms = (
            f"{self.room_members} room members over {ROOMS} rooms at {self.room_rate:g} msg/s each"
            if self.room_members
            else "no room members"
        )
        return (
            f"wrk -t{self.threads} -c{self.connections} ({rate}) {requests}, {sockets}, {rooms}, "
            f">= {self.seconds:g} s per drill{mode}"
        )


ROOMS = 2  # the drill's rooms; DRILL_ROOM_MEMBERS spread over them
SHORT = LoadParams(seconds=4.0, websockets=6, room_members=4, short=True)


@dataclass(frozen=True)
class NodeCommands:
    """How node-loss takes a swarm node down and back (DRILL_NODE_DOWN, DRILL_NODE_UP; `{node}`: its
    hostname). Empty: node-loss is skipped."""

    down: str = DEFAULTS.drill_node_down
    up: str = DEFAULTS.drill_node_up


def parse_load(given: Mapping[str, Any], short: bool = False, strict: bool = False) -> LoadParams:
    """The load from the values given (None: the default, which short mode lowers), each already checked
    against its ToolInputs row; then what rows cannot check alone."""
    chosen = {name: value for name, value in given.items() if value is not None}
    params = replace(SHORT if short else LoadParams(), strict=strict, **chosen)
    if params.connections < params.threads:
        raise DrillError(
            f"WRK_CONNECTIONS={params.connections} < WRK_THREADS={params.threads}: wrk needs a connection "
            "per thread at least"
        )
    check_paths(params)
    return params


PATHS = {"post": "DRILL_POST", "get": "DRILL_GET", "ws_path": "DRILL_WS"}


def check_paths(params: LoadParams) -> None:
    """Each path absolute (DRILL_POST required, the others may be empty) and the body JSON."""
    for name, env in PATHS.items():
        value: str = getattr(params, name)
        if (value or name == "post") and not value.startswith("/"):
            rule = "a path starting with /" + ("" if value or name != "post" else " (required)")
            raise DrillError(f"{env}={value!r}: {rule}, e.g. {getattr(LoadParams(), name)}")
    try:
        json.loads(params.body)
    except ValueError as error:
        raise DrillError(f"DRILL_BODY={params.body!r}: not JSON ({error})") from None


def parse_names(text: str, known: tuple[str, ...], variable: str, what: str, empty: list[str]) -> list[str]:
    """'a', 'a,b' or 'all' -> names, each one known, in the order given; '' -> `empty`."""
    names = [n for n in text.replace(",", " ").split() if n]
    if names == ["all"]:
        return list(known)
    if not names:
        return empty
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            choices = f"choose from {', '.join(known)} or all"
            raise DrillError(f"{variable}={name!r}: no such {what}; {hint}{choices}")
    return list(dict.fromkeys(names))


def parse_drills(text: str, known: tuple[str, ...]) -> list[str]:
    """'reload', 'reload,worker-kill' or '' / 'all' (every drill) -> names, each one known."""
    return parse_names(text, known, "DRILL", "drill", list(known))


def parse_servers(text: str) -> list[str]:
    """'uvicorn', 'blueprint,granian' or 'all' (deploy/stackctl/servers.py) -> names; '' -> the default."""
    return parse_names(text, servers.NAMES, "SERVER", "server", [servers.DEFAULT])


@dataclass
class Row:
    """What one drill did and lost. Failure kinds: `POST 502`, `GET 499`, ... (statuses outside 2xx, per
    method), `connect`/`read`/`write` (wrk's socket errors), `timeout` (no answer within wrk's timeout)."""

    drill: str
    runtime: str
    what: str
    status: Status = Status.PENDING  # passed, failed, error, skipped or no such event
    reason: str = ""  # why skipped, error or no such event
    server: str = servers.DEFAULT  # what ran the app (deploy/stackctl/servers.py)
    mechanism: str = ""  # how that server carried out the event
    knobs: dict[str, str] = field(default_factory=dict)  # what the drill set on its stack
    seconds: float = 0.0
    requests: int = 0  # sent: answered + lost on an open connection (read/write errors)
    responses: int = 0
    rate: float = 0.0  # answered requests/s
    by_method: dict[str, dict[str, int]] = field(default_factory=dict)  # "POST": {"200": n, "502": m}
    latency_ms: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # every failure by kind
    not_counted: list[str] = field(default_factory=list)  # kinds this drill expects by design
    probes: dict[str, int] = field(default_factory=dict)  # the drill's own requests, by outcome
    probe_failures: int = 0  # the drill's own requests that should have succeeded and did not
    lost: int = 0  # failures counted against the allowance (+ probe_failures)
    allowed: int = 0
    allowance: str = "nothing"
    ws_clients: int = 0
    ws_connects: int = 0
    ws_closes: dict[str, int] = field(default_factory=dict)  # close code -> count (1006: no close frame)
    ws_failed_reconnects: int = 0
    ws_failed_by_reason: dict[str, int] = field(default_factory=dict)
    ws_longest_gap_s: float = 0.0  # longest time a client was without a connection
    ws_slowest_connects_s: list[float] = field(default_factory=list)  # the slowest handshakes (s)
    ws_echoes: int = 0  # messages the server echoed
    ws_wrong_echoes: int = 0  # answers that were not the message sent: must be 0
    # The rooms (loadtest/rooms.py Ledger.check): published, delivered, missing, duplicates, latency, closes
    rooms: dict[str, Any] = field(default_factory=dict)
    rooms_allowed: int = 0  # messages room members may miss (a Redis that restarts empty)
    rooms_allowance: str = "nothing"
    recovery_s: float | None = None
    recovery: str = ""  # what recovery_s measures
    timeline: dict[str, float] = field(default_factory=dict)  # seconds after the event, by what happened
    load_average_before: str = ""
    load_average_after: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def rooms_lost(self) -> int:
        """Messages room members missed, and members that gave up (closed for good)."""
        return int(self.rooms.get("missing", 0)) + len(self.rooms.get("fatal", []))

    @property
    def passed(self) -> bool:
        return (
            self.lost <= self.allowed
            and self.ws_failed_reconnects == 0
            and self.ws_wrong_echoes == 0
            and self.rooms_lost <= self.rooms_allowed
        )

    @property
    def weak(self) -> bool:
        """Ran, but below the load floor: a pass here proves little."""
        return self.status.ran and self.rate < FLOOR_RATE

    def verdict(self) -> None:
        self.lost = sum(n for kind, n in self.failures.items() if kind not in self.not_counted)
        self.lost += self.probe_failures
        self.status = Status.PASSED if self.passed else Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weak": self.weak}
