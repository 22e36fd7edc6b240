"""What `make bench` measures: its rows, the server each one runs against, and the inputs of a run."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from loadtest.errors import LoadtestError
from loadtest.status import Status
from service.settings import ToolInputs

DEFAULTS = ToolInputs()

Kind = Literal["throughput", "slow", "websocket", "rooms"]
Target = Literal["direct", "nginx", "haproxy", "caddy"]  # what the load goes through to the app


class BenchError(LoadtestError):
    """Bad input, or something the bench needs is missing; the message is one line."""


class Unavailable(BenchError):
    """A row that cannot run on this machine (e.g. a server version without the worker): skipped, not an
    error."""


@dataclass(frozen=True)
class RowSpec:
    name: str
    kind: Kind
    server: str  # what bench/servers.py starts; consecutive rows on one server share one start
    target: Target
    about: str
    needs: str = ""  # a route of the demo's the row measures: skipped for another APP_MODULE
    sampled: bool = False  # the stack sampler (loadtest/sampler) runs beside the row, as in every load test


ROWS: tuple[RowSpec, ...] = (
    RowSpec("nginx-return", "throughput", "nginx-return", "direct", "nginx `return 200`: the ceiling"),
    RowSpec(
        "bare",
        "throughput",
        "bare",
        "direct",
        "bare FastAPI hello (loadtest/bench/hello.py), gunicorn + uvicorn-worker",
    ),
    RowSpec("blueprint-direct", "throughput", "blueprint", "direct", "the blueprint, its gunicorn bind"),
    RowSpec("blueprint-nginx", "throughput", "blueprint", "nginx", "the blueprint through nginx"),
    RowSpec(
        "blueprint-nginx-sampled",
        "throughput",
        "blueprint",
        "nginx",
        "the blueprint through nginx with the stack sampler reading it once a second",
        sampled=True,
    ),
    RowSpec(
        "blueprint-haproxy",
        "throughput",
        "blueprint",
        "haproxy",
        "the blueprint through HAProxy configured like nginx (deploy/proxies/haproxy.cfg.template)",
    ),
    RowSpec(
        "blueprint-caddy",
        "throughput",
        "blueprint",
        "caddy",
        "the blueprint through Caddy configured like nginx (deploy/proxies/Caddyfile.template)",
    ),
    RowSpec(
        "slow-held",
        "slow",
        "blueprint",
        "nginx",
        "BENCH_SLOW_N requests of /api/slow?delay=BENCH_SLOW_DELAY held at once, through nginx",
        needs="/api/slow",
    ),
    RowSpec(
        "ws-held",
        "websocket",
        "blueprint",
        "nginx",
        "BENCH_WS_N WebSockets on /ws/echo held through nginx",
        needs="/ws/echo",
    ),
    RowSpec(
        "rooms-fanout",
        "rooms",
        "blueprint-rooms",
        "nginx",
        "BENCH_ROOMS_N members of one room through nginx, BENCH_ROOMS_RATE messages/s doubled per step",
        needs="/ws/rooms/{room}",
    ),
    RowSpec(
        "blueprint-nginx-unix",
        "throughput",
        "blueprint-unix",
        "nginx",
        "the blueprint through nginx over a unix socket (GUNICORN_BIND=unix:...)",
    ),
    RowSpec(
        "uvicorn",
        "throughput",
        "uvicorn",
        "direct",
        "the blueprint app under `uvicorn --workers N` (its flags: deploy/stackctl/servers.py)",
    ),
    RowSpec(
        "granian",
        "throughput",
        "granian",
        "direct",
        "the blueprint app under `granian --interface asgi` (its flags: deploy/stackctl/servers.py)",
    ),
    RowSpec(
        "gunicorn-asgi", "throughput", "gunicorn-asgi", "direct", "the blueprint under gunicorn's `-k asgi`"
    ),
)
NAMES = tuple(row.name for row in ROWS)
HELLO_PATH = "/api/ping"  # what the bare row GETs: hello.py's one route


@dataclass(frozen=True)
class Params:
    """The inputs of a run; each field but workers, profile and short is the ToolInputs row bench_<field>."""

    seconds: float = DEFAULTS.bench_seconds
    connections: int = DEFAULTS.bench_connections
    workers: int = 0  # 0: the blueprint's WEB_CONCURRENCY for the profile
    slow_n: int = DEFAULTS.bench_slow_n
    # 1000 held for 5 s = 200 req/s: holding them, not their rate, is measured
    slow_delay: float = DEFAULTS.bench_slow_delay
    ws_n: int = DEFAULTS.bench_ws_n
    ws_hold: float = DEFAULTS.bench_ws_hold  # 0: BENCH_SECONDS
    rooms_n: int = DEFAULTS.bench_rooms_n
    rooms_rate: float = DEFAULTS.bench_rooms_rate
    profile: str = ""  # "": the blueprint's PROFILE
    short: bool = False
    path: str = DEFAULTS.bench_path  # what the throughput rows GET from the app

    def hold_seconds(self) -> float:
        return self.ws_hold or self.seconds

    def describe(self) -> str:
        profile = self.profile or "default"
        return (
            f"{self.seconds:g} s per row, wrk -t1 -c{self.connections} GET {self.path}, "
            f"{self.workers} workers per server, "
            f"slow {self.slow_n} x {self.slow_delay:g} s, {self.ws_n} WebSockets held "
            f"{self.hold_seconds():g} s, {self.rooms_n} room members at {self.rooms_rate:g} msg/s and up, "
            f"PROFILE={profile}"
        )


SHORT = Params(seconds=2.0, slow_n=50, slow_delay=0.5, ws_n=50, rooms_n=50, short=True)


@dataclass
class Row:
    spec: RowSpec
    status: Status = Status.PENDING  # ok, error or skipped
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "server": self.spec.server,
            "target": self.spec.target,
            "about": self.spec.about,
            "status": self.status,
            "note": self.note,
            **self.values,
        }


def parse_rows(text: str) -> list[RowSpec]:
    """'' or 'all' -> every row; 'a,b' -> those rows, in the bench's own order."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or names == ["all"]:
        return list(ROWS)
    for name in names:
        if name not in NAMES:
            close = difflib.get_close_matches(name, NAMES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise BenchError(f"BENCH={text}: unknown row {name!r}{hint} (rows: {', '.join(NAMES)})")
    return [row for row in ROWS if row.name in names]


def parse_params(given: Mapping[str, Any], short: bool) -> Params:
    """The inputs from the values given (None: the default, which short mode lowers), each already checked
    against its ToolInputs row."""
    chosen = {key: value for key, value in given.items() if value is not None and value != ""}
    params = replace(SHORT if short else Params(), short=short, **chosen)
    if not params.path.startswith("/"):
        raise BenchError(f"BENCH_PATH={params.path!r}: a path starting with /, e.g. {HELLO_PATH}")
    return params
