"""What `make bench` measures: its rows, the server each one runs against, and the inputs of a run."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["throughput", "slow", "websocket"]
Target = Literal["direct", "nginx"]


class BenchError(Exception):
    """Bad input, or something the bench needs is missing; the message is one line."""


class Unavailable(BenchError):
    """A row that cannot run on this machine (e.g. a server version without the worker); not a failure."""


@dataclass(frozen=True)
class RowSpec:
    name: str
    kind: Kind
    server: str  # a key of servers.SERVERS; consecutive rows on one server share one start
    target: Target
    about: str


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
        "slow-held",
        "slow",
        "blueprint",
        "nginx",
        "BENCH_SLOW_N requests of /api/slow?delay=BENCH_SLOW_DELAY held at once, through nginx",
    ),
    RowSpec(
        "ws-held",
        "websocket",
        "blueprint",
        "nginx",
        "BENCH_WS_N WebSockets on /ws/echo held through nginx",
    ),
    RowSpec(
        "blueprint-nginx-unix",
        "throughput",
        "blueprint-unix",
        "nginx",
        "the blueprint through nginx over a unix socket (GUNICORN_BIND=unix:...)",
    ),
    RowSpec("uvicorn", "throughput", "uvicorn", "direct", "the blueprint app under `uvicorn --workers N`"),
    RowSpec(
        "granian", "throughput", "granian", "direct", "the blueprint app under `granian --interface asgi`"
    ),
    RowSpec(
        "gunicorn-asgi", "throughput", "gunicorn-asgi", "direct", "the blueprint under gunicorn's `-k asgi`"
    ),
)
NAMES = tuple(row.name for row in ROWS)
PATH = "/api/ping"


@dataclass(frozen=True)
class Params:
    seconds: float = 10.0
    connections: int = 64
    workers: int = 0  # 0: the blueprint's WEB_CONCURRENCY for the profile
    slow_n: int = 1000
    slow_delay: float = 5.0  # 1000 held for 5 s = 200 req/s: holding them, not their rate, is measured
    ws_n: int = 1000
    ws_hold: float = 0.0  # 0: BENCH_SECONDS
    profile: str = ""
    short: bool = False

    def hold_seconds(self) -> float:
        return self.ws_hold or self.seconds

    def describe(self) -> str:
        profile = self.profile or "default"
        return (
            f"{self.seconds:g} s per row, wrk -t1 -c{self.connections}, {self.workers} workers per server, "
            f"slow {self.slow_n} x {self.slow_delay:g} s, {self.ws_n} WebSockets held "
            f"{self.hold_seconds():g} s, PROFILE={profile}"
        )


SHORT = Params(seconds=2.0, slow_n=50, slow_delay=0.5, ws_n=50, short=True)


@dataclass
class Row:
    spec: RowSpec
    status: str = "pending"  # ok, unavailable or failed
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


def parse_params(raw: dict[str, str | None], short: bool) -> Params:
    """Each input as given (None: the default, or the short mode's) checked before anything starts."""
    base = SHORT if short else Params()
    values: dict[str, Any] = {}
    rules: dict[str, tuple[str, type, float]] = {
        "seconds": ("BENCH_SECONDS", float, 1),
        "connections": ("BENCH_CONNECTIONS", int, 1),
        "workers": ("WEB_CONCURRENCY", int, 0),
        "slow_n": ("BENCH_SLOW_N", int, 1),
        "slow_delay": ("BENCH_SLOW_DELAY", float, 0),
        "ws_n": ("BENCH_WS_N", int, 1),
        "ws_hold": ("BENCH_WS_HOLD", float, 0),
    }
    for key, (env, kind, minimum) in rules.items():
        text = raw.get(key)
        if text is None or text == "":
            continue
        try:
            value = kind(text)
        except ValueError:
            raise BenchError(f"{env}={text!r}: not a number") from None
        if value < minimum:
            raise BenchError(f"{env}={text!r}: must be at least {minimum:g}")
        values[key] = value
    return Params(
        seconds=values.get("seconds", base.seconds),
        connections=values.get("connections", base.connections),
        workers=values.get("workers", base.workers),
        slow_n=values.get("slow_n", base.slow_n),
        slow_delay=values.get("slow_delay", base.slow_delay),
        ws_n=values.get("ws_n", base.ws_n),
        ws_hold=values.get("ws_hold", base.ws_hold),
        profile=raw.get("profile") or "",
        short=short,
    )
