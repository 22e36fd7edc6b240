"""What every scenario shares: base users, WebSocket reporting, thresholds, and the run summary.

Imported by each locustfile (as `loadtest.common`, so its event listeners are registered once per process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import gevent
import psutil
import websocket
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue
from locust import FastHttpUser, User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsEntry

from loadtest.limits import CPU_LIMIT, THRESHOLD_EXIT_CODE
from service.settings import ConfigError, load_settings

try:
    KNOBS = load_settings()
except ConfigError as error:
    raise SystemExit(f"loadtest: {error}") from None

log = logging.getLogger("loadtest")

CPU_SAMPLE_SECONDS = 2.0
# wss://: verified against SSL_CERT_FILE when set (the runner points it at a TLS stack's local CA), else
# against the system's CAs; never unverified.
WSS_OPTIONS = {"ca_certs": os.environ["SSL_CERT_FILE"]} if os.environ.get("SSL_CERT_FILE") else {}
RECONNECT_CODES = {1001: "going away", 1012: "service restart"}


# --- typed views of the methods locust and websocket-client leave unannotated ------------------------------
Handler = TypeVar("Handler", bound=Callable[..., None])


class Hook(Protocol):
    """A Locust event, locust.event.EventHook."""

    def add_listener(self, handler: Handler) -> Handler: ...

    def fire(self, *, reverse: bool = False, **kwargs: Any) -> None: ...


def listener(event: Hook) -> Callable[[Handler], Handler]:
    """`@listener(events.init)`: EventHook.add_listener as a typed decorator."""
    return event.add_listener


class RecordedError(Protocol):
    """A row of Locust's error table, locust.stats.StatsError."""

    def to_dict(self) -> dict[str, Any]: ...


class RawSocket(Protocol):
    """websocket.WebSocket's shutdown(): close the TCP socket now, without a close handshake."""

    def shutdown(self) -> None: ...


def report_sample(
    environment: Environment,
    request_type: str,
    name: str,
    started: float,
    length: int = 0,
    exception: Exception | None = None,
    response_time: float | None = None,
) -> None:
    """One row sample for a protocol Locust does not time itself (WebSocket, stream chunks)."""
    request: Hook = environment.events.request
    request.fire(
        request_type=request_type,
        name=name,
        response_time=(time.perf_counter() - started) * 1000 if response_time is None else response_time,
        response_length=length,
        exception=exception,
        context={},
    )


# --- options: knobs of service/settings.py, settable per run on the command line and in the web UI; ------
# --- each option's name, env var, default and help come from the knob ----------------------------------
KNOB_OPTIONS = (
    "locust_max_fail_ratio",
    "locust_max_p95",
    "locust_ws_hold",
    "locust_slow_delay",
    "locust_blocking_delay",
)


@listener(events.init_command_line_parser)
def add_options(parser: LocustArgumentParser) -> None:
    for field in KNOB_OPTIONS:
        parser.add_argument(
            "--" + field.removeprefix("locust_").replace("_", "-"),
            type=float,
            env_var=field.upper(),
            default=getattr(KNOBS, field),
            help=type(KNOBS).model_fields[field].description,
        )
    parser.add_argument(
        "--cpu-limit",
        type=float,
        default=CPU_LIMIT,
        include_in_web_ui=False,
        help="flag the run invalid when a Locust process's CPU goes above this percentage (Locust's is 90)",
    )
    parser.add_argument(
        "--summary-file",
        default="",
        include_in_web_ui=False,
        help="write the run's summary (stats, thresholds, Locust CPU) as JSON here",
    )


def option(environment: Environment, name: str, default: Any) -> Any:
    options = environment.parsed_options
    return getattr(options, name, default) if options is not None else default


# --- HTTP -----------------------------------------------------------------------------------------------


def describe_failure(response: Any) -> str:
    """One line naming who answered: the stack's errors are JSON with a `layer` field."""
    if not response.status_code:
        return f"no response: {getattr(response, 'error', None) or 'connection failed'}"
    try:
        body = response.json()
    except Exception:
        return f"{response.status_code} with a non-JSON body"
    if isinstance(body, dict) and "layer" in body:
        return f"{response.status_code} {body.get('error')} from {body['layer']}"
    return f"{response.status_code} {str(body)[:80]}"


class ApiUser(FastHttpUser):
    """FastHttpUser with explicit timeouts, longer than the stack's own, so its errors are what we record."""

    abstract = True
    network_timeout = KNOBS.locust_client_timeout
    connection_timeout = KNOBS.locust_client_timeout
    # Verify HTTPS (FastHttpUser's default skips it): system CAs, or SSL_CERT_FILE as the runner sets it.
    insecure = False

    def get_json(self, path: str, name: str, expect: str | None = None) -> dict[str, Any] | None:
        with self.client.get(path, name=name, catch_response=True) as response:
            return judge(response, expect)


def judge(response: Any, expect: str | None = None) -> dict[str, Any] | None:
    """Mark a catch_response response: 200 with a JSON object (holding key `expect`) or a failure."""
    if response.status_code != 200:
        response.failure(describe_failure(response))
        return None
    try:
        body = response.json()
    except Exception:
        response.failure("200 with a non-JSON body")
        return None
    if not isinstance(body, dict) or (expect is not None and expect not in body):
        response.failure(f"200 without {expect!r}: {str(body)[:80]}")
        return None
    response.success()
    return body


# --- WebSocket ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str


class WebSocketUser(User):
    """A raw WebSocket user on websocket-client, which gevent makes cooperative (asyncio `websockets` would
    block Locust's loop). One task = one connection held for --ws-hold seconds. Connect time, round trips
    and pushes are reported as their own rows (request type WS); a close with 1012/1001 (the server
    restarting or leaving) is followed by a reconnect, reported as its own row; any other close fails.

    A receiving greenlet reads all the time: websocket-client answers the server's pings only inside recv().
    """

    abstract = True
    path = "/ws/echo"
    query = ""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        parts = urlsplit(self.host or "")
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.url = f"{scheme}://{parts.netloc}{self.path}{'?' + self.query if self.query else ''}"
        self.socket: websocket.WebSocket | None = None
        self.receiver: gevent.Greenlet[[websocket.WebSocket, AsyncResult[Closed]], None] | None = None
        self.closed: AsyncResult[Closed] = AsyncResult()
        self.inbox: Queue[str | bytes] = Queue()

    def report(
        self,
        what: str,
        started: float,
        length: int = 0,
        exception: Exception | None = None,
        response_time: float | None = None,
    ) -> None:
        report_sample(
            self.environment, "WS", f"{self.path} {what}", started, length, exception, response_time
        )

    def connect(self, what: str = "connect", attempts: int = 1) -> bool:
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                ws = websocket.create_connection(
                    self.url,
                    timeout=KNOBS.locust_client_timeout,
                    enable_multithread=True,
                    skip_utf8_validation=True,
                    sslopt=WSS_OPTIONS,
                )
            except Exception as error:
                if attempt == attempts:
                    self.report(what, started, exception=error)
                    return False
                gevent.sleep(0.5)
                continue
            self.report(what, started)
            self.socket, self.closed, self.inbox = ws, AsyncResult(), Queue()
            self.receiver = gevent.spawn(self.receive, ws, self.closed)
            return True
        return False

    def receive(self, ws: websocket.WebSocket, closed: AsyncResult[Closed]) -> None:
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                    closed.set(Closed(code, data[2:].decode(errors="replace")))
                    return
                self.on_message(data.decode() if opcode == websocket.ABNF.OPCODE_TEXT else data)
        except websocket.WebSocketTimeoutException:
            closed.set(Closed(1006, f"nothing received for {KNOBS.locust_client_timeout:g}s"))
        except (websocket.WebSocketException, OSError) as error:
            closed.set(Closed(1006, str(error) or type(error).__name__))

    def on_message(self, data: str | bytes) -> None:
        self.inbox.put(data)

    def converse(self, deadline: float) -> None:
        """Use the open connection until `deadline` (time.monotonic) or until the server closes it."""
        self.closed.wait(timeout=max(0.0, deadline - time.monotonic()))

    @task
    def hold_connection(self) -> None:
        deadline = time.monotonic() + float(option(self.environment, "ws_hold", KNOBS.locust_ws_hold))
        if not self.connect():
            return
        while True:
            self.converse(deadline)
            if not self.closed.ready():
                break
            closed = self.closed.get()
            assert closed is not None  # receive() always sets a Closed
            self.hang_up()
            if closed.code not in RECONNECT_CODES:
                error = ConnectionError(f"closed with {closed.code}: {closed.reason}")
                self.report("closed", time.perf_counter(), exception=error)
                return
            # The server is restarting or leaving: a new worker takes the connection (retried briefly).
            if time.monotonic() >= deadline or not self.connect(f"reconnect after {closed.code}", attempts=3):
                return
        self.hang_up()

    def hang_up(self) -> None:
        receiver, ws = self.receiver, self.socket
        self.receiver = self.socket = None
        if receiver is not None:
            receiver.kill(block=True, timeout=1)
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close(timeout=1)
            raw: RawSocket = ws
            raw.shutdown()

    def on_stop(self) -> None:
        self.hang_up()


class EchoRoundTrips(WebSocketUser):
    """Sends a message every `message_interval` seconds and times its echo."""

    abstract = True
    path = "/ws/echo"
    message_interval = 0.5

    def converse(self, deadline: float) -> None:
        sequence = 0
        while time.monotonic() < deadline and not self.closed.ready():
            sequence += 1
            text = json.dumps({"seq": sequence, "pad": "x" * 64})
            started = time.perf_counter()
            try:
                assert self.socket is not None
                self.socket.send(text)
                reply = self.inbox.get(timeout=KNOBS.locust_client_timeout)
            except Empty:
                if self.closed.wait(timeout=1) is None:
                    self.report("round-trip", started, exception=TimeoutError("no echo"))
                return
            except (websocket.WebSocketException, OSError) as error:
                if self.closed.wait(timeout=1) is None:
                    self.report("round-trip", started, exception=error)
                return
            if reply != text:
                self.report("round-trip", started, exception=ValueError("the echo differs from the message"))
            else:
                self.report("round-trip", started, length=len(reply))
            self.closed.wait(timeout=max(0.0, min(self.message_interval, deadline - time.monotonic())))


class TickerPushes(WebSocketUser):
    """Listens to server pushes; each push is a row whose time is its age (server `t` to arrival)."""

    abstract = True
    path = "/ws/ticker"
    interval = 0.5

    def __init__(self, environment: Environment) -> None:
        self.query = f"interval={self.interval}"
        super().__init__(environment)

    def on_message(self, data: str | bytes) -> None:
        arrived = time.time()
        try:
            push = json.loads(data)
            age = max(0.0, (arrived - float(push["t"])) * 1000)
        except (ValueError, KeyError, TypeError) as error:
            self.report("push", time.perf_counter(), len(data), exception=ValueError(f"bad push: {error}"))
            return
        self.report("push", time.perf_counter(), len(data), response_time=age)


# --- run summary: stats, thresholds and Locust's own CPU ------------------------------------------------


@listener(events.init)
def refresh_loop_clock(environment: Environment, **_: Any) -> None:
    """gevent's loop caches "now" and importing the locustfiles does not refresh it, so Locust's --run-time
    timer would start in the past and end the run early by the import time (seconds on a busy machine)."""
    gevent.get_hub().loop.update_now()


class CpuWatch:
    """Peak CPU of this Locust process, sampled every CPU_SAMPLE_SECONDS (Locust itself checks every 10 s,
    which a short run never reaches). Workers send theirs to the master with every stats report."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0.0
        self.peaks: dict[str, float] = {}
        self.greenlet: gevent.Greenlet[[], None] | None = None

    def start(self) -> None:
        self.peak = 0.0
        self.peaks.clear()
        self.process.cpu_percent()
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self.sample)

    def sample(self) -> None:
        while True:
            gevent.sleep(CPU_SAMPLE_SECONDS)
            self.peak = max(self.peak, self.process.cpu_percent())


cpu_watch = CpuWatch()


@listener(events.test_start)
def start_cpu_watch(environment: Environment, **_: Any) -> None:
    cpu_watch.start()


@listener(events.report_to_master)
def send_cpu_peak(client_id: str, data: dict[str, Any]) -> None:
    data["loadtest_cpu_peak"] = cpu_watch.peak


@listener(events.worker_report)
def receive_cpu_peak(client_id: str, data: dict[str, Any]) -> None:
    if "loadtest_cpu_peak" in data:
        name = f"worker {client_id}"
        cpu_watch.peaks[name] = max(cpu_watch.peaks.get(name, 0.0), float(data["loadtest_cpu_peak"]))


def stats_row(entry: StatsEntry) -> dict[str, Any]:
    return {
        "type": entry.method or "",
        "name": entry.name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": round(entry.total_rps, 3),
        "avg_ms": round(entry.avg_response_time, 2),
        "p50_ms": entry.get_response_time_percentile(0.5) if entry.num_requests else 0,
        "p95_ms": entry.get_response_time_percentile(0.95) if entry.num_requests else 0,
        "p99_ms": entry.get_response_time_percentile(0.99) if entry.num_requests else 0,
        "max_ms": round(entry.max_response_time, 2),
    }


def run_summary(environment: Environment) -> dict[str, Any]:
    runner = environment.runner
    stats = environment.stats
    total = stats_row(stats.total)
    total["fail_ratio"] = stats.total.fail_ratio
    max_fail_ratio = float(option(environment, "max_fail_ratio", KNOBS.locust_max_fail_ratio))
    max_p95 = float(option(environment, "max_p95", KNOBS.locust_max_p95))
    violations = []
    if total["fail_ratio"] > max_fail_ratio:
        violations.append(f"failure ratio {total['fail_ratio']:.2%} > {max_fail_ratio:.2%}")
    if max_p95 > 0 and total["p95_ms"] > max_p95:
        violations.append(f"p95 {total['p95_ms']:g} ms > {max_p95:g} ms")
    cpu_limit = float(option(environment, "cpu_limit", CPU_LIMIT))
    peaks = {"master" if isinstance(runner, MasterRunner) else "local": cpu_watch.peak, **cpu_watch.peaks}
    locust_warning = bool(
        runner and (runner.cpu_warning_emitted or getattr(runner, "worker_cpu_warning_emitted", False))
    )
    recorded_errors: Iterable[RecordedError] = stats.errors.values()
    return {
        "total": total,
        "rows": [
            stats_row(entry) for entry in sorted(stats.entries.values(), key=lambda e: (e.method, e.name))
        ],
        "errors": [error.to_dict() for error in recorded_errors],
        "thresholds": {"max_fail_ratio": max_fail_ratio, "max_p95_ms": max_p95, "violations": violations},
        "cpu": {
            "limit_percent": cpu_limit,
            "peak_percent": max(peaks.values()),
            "peaks": peaks,
            "locust_warning": locust_warning,
            "valid": not locust_warning and max(peaks.values()) <= cpu_limit,
        },
        "workers": len(cpu_watch.peaks),
    }


@listener(events.quitting)
def judge_run(environment: Environment, **_: Any) -> None:
    """Thresholds decide the exit code (not Locust's "any failure = 1"); the summary goes to a file."""
    if environment.runner is None or isinstance(environment.runner, WorkerRunner):
        return
    summary = run_summary(environment)
    if not summary["cpu"]["valid"]:
        log.warning(
            "a Locust process reached %.0f%% CPU (limit %.0f%%): the numbers of this run are not valid",
            summary["cpu"]["peak_percent"],
            summary["cpu"]["limit_percent"],
        )
    if summary["thresholds"]["violations"]:
        log.error("threshold violated: %s", "; ".join(summary["thresholds"]["violations"]))
        environment.process_exit_code = THRESHOLD_EXIT_CODE
    elif not environment.runner.exceptions:
        environment.process_exit_code = 0
    target = option(environment, "summary_file", "")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")
