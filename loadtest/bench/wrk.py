"""wrk for `make bench`: one closed-loop run against a URL, its summary (bench.lua), its own CPU use, and
the CPU the server's processes spent meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from loadtest.bench.rows import BenchError
from loadtest.limits import CPU_LIMIT

LUA = Path(__file__).with_name("bench.lua")
SAMPLE_S = 0.2
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    wrk_cpu_percent: float
    server_cpu_s: dict[str, float]  # by role

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @property
    def generator_cpu_bound(self) -> bool:
        return self.wrk_cpu_percent > CPU_LIMIT

    def per_request_us(self, seconds: float) -> float | None:
        return round(seconds / self.requests * 1e6, 1) if self.requests else None

    def fields(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "requests": self.requests,
            "errors": self.errors,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "wrk_cpu_percent": round(self.wrk_cpu_percent, 1),
            "generator_cpu_bound": self.generator_cpu_bound,
            "server_cpu_us_per_request": self.per_request_us(sum(self.server_cpu_s.values())),
            "server_cpu_us_by_role": {r: self.per_request_us(s) for r, s in self.server_cpu_s.items()},
        }


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_wrk(
    wrk: str,
    url: str,
    seconds: float,
    connections: int,
    timeout_s: float,
    out_dir: Path,
    server_roles: Callable[[], dict[str, list[int]]],
) -> WrkRun:
    """`wrk -t1 -cC -dS --timeout T -s bench.lua url`; wrk's CPU is sampled with psutil while it runs,
    the server's as the change in its processes' CPU time (a process that exits meanwhile is not counted)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, log = out_dir / "wrk.json", out_dir / "wrk.txt"
    summary.unlink(missing_ok=True)
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout"]
    command += [f"{max(1, round(timeout_s))}s", "-s", str(LUA), url]
    roles = server_roles()
    server_before = {role: cpu_seconds(pids) for role, pids in roles.items()}
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            env={**os.environ, "BENCH_WRK_OUT": str(summary)},
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        watched = psutil.Process(process.pid)
        started = time.monotonic()
        wrk_cpu, wrk_wall = 0.0, 0.0
        while process.poll() is None:
            try:
                times = watched.cpu_times()
                wrk_cpu, wrk_wall = times.user + times.system, time.monotonic() - started
            except psutil.NoSuchProcess:
                break
            time.sleep(SAMPLE_S)
        process.wait()
    server_cpu = {role: cpu_seconds(pids) - server_before[role] for role, pids in roles.items()}
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise BenchError(f"wrk wrote no summary (exit {process.returncode}): {tail or 'no output'}") from None
    latency = data["latency_ms"]
    return WrkRun(
        requests=int(data["requests"]),
        seconds=int(data["duration_us"]) / 1e6,
        p50_ms=round(float(latency["p50"]), 3),
        p99_ms=round(float(latency["p99"]), 3),
        max_ms=round(float(latency["max"]), 3),
        non_2xx=int(data["non_2xx"]),
        socket_errors={kind: int(data["errors"][kind]) for kind in SOCKET_ERRORS},
        wrk_cpu_percent=100 * wrk_cpu / wrk_wall if wrk_wall else 0.0,
        server_cpu_s=server_cpu,
    )
