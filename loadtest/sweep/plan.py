"""What a sweep will run: the SWEEP axes parsed and checked, their combinations, and the result rows."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deploy.stackctl.config import KNOBS, PROFILES_DIR
from deploy.stackctl.stack import OWNED_BY_RUNTIME
from loadtest.errors import LoadtestError
from loadtest.status import Status
from service.settings import ConfigError, load_settings

METRICS = (
    ("rps", "requests/s"),
    ("p50_ms", "p50 (ms)"),
    ("p95_ms", "p95 (ms)"),
    ("p99_ms", "p99 (ms)"),
    ("fail_ratio", "failure ratio"),
)
SUMMARY_FIELDS = (
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "requests",
    "failures",
    "fail_ratio",
    "ws_rtt_p50_ms",
    "ws_rtt_p95_ms",
    "cpu_valid",
)


class SweepError(LoadtestError):
    """Bad sweep input; the message is one line naming the knob, the value and the rule."""


@dataclass(frozen=True)
class Axis:
    knob: str
    values: tuple[str, ...]


@dataclass
class Result:
    index: int
    knobs: dict[str, str]
    status: Status = Status.PENDING  # ok, error or refused
    refused_rule: str = ""
    note: str = ""
    locust_report: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.knobs.items())

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_sweep(text: str) -> list[Axis]:
    """'A=1,2 B=x,y' -> axes, each value checked against the knob's own rule before anything runs."""
    tokens = text.split()
    if not tokens:
        raise SweepError("SWEEP is empty: give knobs and values, e.g. SWEEP='WEB_CONCURRENCY=1,2,4'")
    axes: list[Axis] = []
    for token in tokens:
        name, equals, raw = token.partition("=")
        if not equals or not name:
            raise SweepError(f"SWEEP: {token!r} is not KNOB=value1,value2")
        if name not in KNOBS:
            close = difflib.get_close_matches(name, KNOBS, n=1)
            hint = f"; did you mean {close[0]}?" if close else " (knobs: docs/SETTINGS.md)"
            raise SweepError(f"SWEEP: unknown knob {name}{hint}")
        if name in OWNED_BY_RUNTIME or name == "RUNTIME":
            raise SweepError(f"SWEEP: {name} is chosen by the sweep itself (each stack gets free ports)")
        if any(axis.knob == name for axis in axes):
            raise SweepError(f"SWEEP: {name} is given twice; list all its values once: {name}=a,b")
        values = tuple(raw.split(","))
        for value in values:
            check_value(name, value)
        if len(set(values)) != len(values):
            raise SweepError(f"SWEEP: {name}={raw} repeats a value")
        axes.append(Axis(name, values))
    return axes


def check_value(name: str, value: str) -> None:
    if value == "":
        raise SweepError(f"SWEEP: {name} has an empty value; write {name}=a,b with no empty entries")
    if name == "PROFILE":
        if not (PROFILES_DIR / f"{value}.env").is_file():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.env")))
            raise SweepError(f"SWEEP: PROFILE={value!r}: no deploy/profiles/{value}.env (known: {known})")
        return
    try:
        load_settings(**{KNOBS[name]: value})
    except ConfigError as error:
        raise SweepError(f"SWEEP: {error}") from None


def combinations(axes: Sequence[Axis]) -> list[dict[str, str]]:
    return [
        dict(zip([a.knob for a in axes], values, strict=True))
        for values in itertools.product(*(a.values for a in axes))
    ]


@dataclass(frozen=True)
class Load:
    scenario: str
    users: int
    spawn_rate: float
    run_time: str
    workers: int = 0
