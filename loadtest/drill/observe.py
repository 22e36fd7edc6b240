"""What the drills watch on a local stack: worker pids and the upstream connections each holds (psutil),
which new worker answers first, how long processes take to exit, nginx's access line for one request."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import httpx2
import psutil

from deploy.stackctl import procs, stack

RESPAWN_WITHIN_S = 60.0


def bind_url(handle: stack.Handle) -> str:
    return f"http://{handle.settings.gunicorn_bind}"


def bind_port(handle: stack.Handle) -> int:
    return int(handle.settings.gunicorn_bind.rsplit(":", 1)[1])


def upstream_connections(pid: int, port: int) -> int:
    """Established TCP connections worker `pid` holds on gunicorn's port: nginx's upstream connections
    (pooled idle ones, those with a request in flight, WebSocket tunnels)."""
    try:
        return sum(
            1
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )
    except psutil.Error:
        return 0


def answering_pid(url: str) -> int | None:
    """The pid in a readiness answer (the platform's, so any APP_MODULE has it), if ready."""
    try:
        response = httpx2.get(url, timeout=1.0)
        return int(response.json()["pid"]) if response.status_code == 200 else None
    except (httpx2.HTTPError, ValueError, KeyError, TypeError):
        return None


def new_worker_answers(handle: stack.Handle, old: set[int], since: float) -> float | None:
    """Seconds from `since` until a worker whose pid is not in `old` answers APP_READINESS_PATH on
    GUNICORN_BIND. Each probe is a fresh connection, which the kernel hands to whichever worker accepts
    first."""
    url = f"{bind_url(handle)}{handle.settings.app_readiness_path}"
    deadline = time.monotonic() + RESPAWN_WITHIN_S
    while time.monotonic() < deadline:
        pid = answering_pid(url)
        if pid is not None and pid not in old:
            return time.monotonic() - since
        time.sleep(0.05)
    return None


class WorkerWatch:
    """Samples the local stack's worker pids (and each one's upstream connections) every 0.1 s during a
    drill: which workers started and which went, and how many connections a worker held before it went."""

    def __init__(self, handle: stack.Handle) -> None:
        self.handle = handle  # a reload keeps the master, so this handle still finds the new workers
        self.port = bind_port(handle)
        self.first = set(handle.worker_pids())
        self.seen = set(self.first)
        self.gone: dict[int, float] = {}  # pid -> when it was first missing
        self.samples: list[tuple[float, int, int]] = []  # (when, pid, connections)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            pids = set(self.handle.worker_pids())
            now = time.monotonic()
            counts = [(now, pid, upstream_connections(pid, self.port)) for pid in pids]
            with self.lock:
                self.samples.extend(counts)
                for pid in self.seen - pids - self.gone.keys():
                    self.gone[pid] = now
                self.seen |= pids

    def first_gone(self, among: set[int], within: float) -> tuple[int, float] | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with self.lock:
                gone = sorted((when, pid) for pid, when in self.gone.items() if pid in among)
            if gone:
                return gone[0][1], gone[0][0]
            time.sleep(0.05)
        return None

    def peak_connections(self, pid: int, since: float) -> int:
        with self.lock:
            return max((n for when, p, n in self.samples if p == pid and when >= since), default=0)

    def gone_among(self, pids: set[int]) -> list[int]:
        with self.lock:
            return sorted(pid for pid in self.gone if pid in pids)

    def started(self) -> int:
        with self.lock:
            return len(self.seen - self.first)


def status_of(url: str, timeout: float, request_id: str | None = None) -> str:
    headers = {"X-Request-ID": request_id} if request_id else None
    try:
        return str(httpx2.get(url, timeout=timeout, headers=headers).status_code)
    except httpx2.HTTPError as error:
        return type(error).__name__


def nginx_access(handle: stack.Handle, request_id: str, within: float = 2.0) -> dict[str, Any]:
    """nginx's JSON access line for one request (upstream_status lists every attempt). nginx buffers its
    access log and writes it up to a second late (`flush=1s` in the template), so this waits for it."""
    deadline = time.monotonic() + within
    while True:
        for line in handle.logs()["nginx"].read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{request_id}"' in line:
                with contextlib.suppress(ValueError):
                    found: dict[str, Any] = json.loads(line)
                    return found
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.1)


def exits(pids: dict[str, int], within: float) -> dict[str, float]:
    """Seconds until each process exited, polled every 50 ms."""
    started = time.monotonic()
    gone: dict[str, float] = {}
    while len(gone) < len(pids) and time.monotonic() - started < within:
        for name, pid in pids.items():
            if name not in gone and not procs.alive(pid):
                gone[name] = time.monotonic() - started
        time.sleep(0.05)
    return gone
