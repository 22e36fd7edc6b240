"""Where the sampler reads a stack, once per sample, in each runtime: every app instance's metrics (the
platform's APP_METRICS_PATH: per-worker gauges, request and exit counts), nginx's stub_status, and the
nginx access lines written since the last sample.

- local: the metrics straight from gunicorn's bind (TCP or unix socket), a fresh connection each time so
  that a stalled worker holding a kept-alive one cannot stall the sample; stub_status on the status port;
  the access lines from nginx's log file in the run dir.
- docker (compose) and swarm: one small Python agent per app container (`docker exec -i`, AGENT below),
  asked for the metrics on its own loopback or socket and, in one container, for nginx's stub_status over
  the stack's network (nginx allows its subnet); the access lines from `docker logs -f` of the nginx
  container. Containers are listed again every CONTAINERS_EVERY_S: scaled, replaced or killed ones come and
  go. Swarm: the tasks of this node only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from deploy.healthcheck import UnixConnection
from deploy.stackctl import docker, stack
from deploy.stackctl.ports import LOOPBACK, split_bind
from service.settings import unix_socket_path

TIMEOUT_S = 0.8  # a sample waits no longer for any one part
MAX_LOG_BYTES = 16 << 20  # access lines read per sample at most (~40,000 lines)
CONTAINERS_EVERY_S = 5.0


@dataclass
class AppScrape:
    instance: str  # "" on the local runtime; else the container's name
    text: str | None
    error: str = ""


@dataclass
class Raw:
    """What one sample read."""

    t: float
    apps: list[AppScrape] = field(default_factory=list)
    stub: str | None = None
    errors: list[str] = field(default_factory=list)
    log: bytes = b""  # nginx's access lines since the last sample (its error lines may be among them)
    own_nginx_requests: int = 0  # requests the sampler itself sent through nginx (stub_status)


class Source(ABC):
    @abstractmethod
    def read(self) -> Raw: ...

    def close(self) -> None:
        return None


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip().rstrip(":")


class LogTail:
    """The complete lines appended to a file since the last call, as bytes; starts at its end. The file is
    held open, as `tail -F` does: when it is rotated (LOG_MAX_MB renames it away), the rest of the old file
    is read first, then the new one from its start; a file cut short in place is read again from its start."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.handle: BinaryIO | None = None
        if path is not None:
            with contextlib.suppress(OSError):
                self.handle = path.open("rb")
                self.handle.seek(0, os.SEEK_END)

    def read(self) -> bytes:
        if self.path is None:
            return b""
        lines = self.drain(MAX_LOG_BYTES)
        if len(lines) < MAX_LOG_BYTES and self.rotated():
            self.close()
            with contextlib.suppress(OSError):
                self.handle = self.path.open("rb")
            lines += self.drain(MAX_LOG_BYTES - len(lines))
        return lines

    def drain(self, most: int) -> bytes:
        """Up to `most` bytes of complete lines from the held file; a line still being written waits."""
        if self.handle is None:
            return b""
        try:
            if os.fstat(self.handle.fileno()).st_size < self.handle.tell():
                self.handle.seek(0)
            chunk = self.handle.read(most)
            complete = chunk.rfind(b"\n") + 1
            if complete < len(chunk):
                self.handle.seek(complete - len(chunk), os.SEEK_CUR)
        except OSError:
            return b""
        return chunk[:complete]

    def rotated(self) -> bool:
        """The path now names another file than the one held (or one appeared where there was none)."""
        if self.path is None:
            return False
        try:
            now = os.stat(self.path).st_ino
            return self.handle is None or now != os.fstat(self.handle.fileno()).st_ino
        except OSError:
            return False

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def fetch(connection: http.client.HTTPConnection, path: str) -> str:
    """GET `path` on a fresh connection (http.client: a tenth of an HTTP client library's CPU)."""
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        if response.status != 200:
            raise OSError(f"{path} answered {response.status}")
        return body
    finally:
        connection.close()


class LocalSource(Source):
    def __init__(self, handle: stack.Handle) -> None:
        settings = handle.settings
        self.metrics_path = settings.app_metrics_path
        self.socket_path = unix_socket_path(settings.gunicorn_bind)
        self.bind = split_bind(settings.gunicorn_bind) if self.socket_path is None else ("", 0)
        self.status = (LOOPBACK, settings.nginx_status_port)
        self.log = LogTail(handle.logs().get("nginx"))

    def app(self) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return UnixConnection(self.socket_path, TIMEOUT_S)
        host, port = self.bind
        return http.client.HTTPConnection(
            LOOPBACK if host in ("0.0.0.0", "") else host, port, timeout=TIMEOUT_S
        )

    def read(self) -> Raw:
        raw = Raw(time.time())
        try:
            raw.apps.append(AppScrape("", fetch(self.app(), self.metrics_path)))
        except (OSError, http.client.HTTPException) as error:
            raw.apps.append(AppScrape("", None, describe(error)))
        raw.own_nginx_requests = 1
        try:
            raw.stub = fetch(http.client.HTTPConnection(*self.status, timeout=TIMEOUT_S), "/stub_status")
        except (OSError, http.client.HTTPException) as error:
            raw.errors.append(f"nginx stub_status: {describe(error)}")
        raw.log = self.log.read()
        return raw

    def close(self) -> None:
        self.log.close()


# Runs inside an app container (its python3, no packages): for each line it reads on stdin, one line of
# JSON with the app's metrics (GUNICORN_BIND of the container, TCP or unix socket) and, when the line names
# a host:port, nginx's stub_status there. It ends when stdin closes.
AGENT = r"""
import http.client, json, os, socket, sys
metrics_path = sys.argv[1]
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(bind[5:])
def get(connection, path):
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        return (body, "") if response.status == 200 else (None, "status %d" % response.status)
    except Exception as error:
        return None, "%s: %s" % (type(error).__name__, error)
    finally:
        connection.close()
def app():
    if bind.startswith("unix:"):
        return Unix("localhost", timeout=%(timeout)s)
    host, port = bind.rsplit(":", 1)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return http.client.HTTPConnection(host, int(port), timeout=%(timeout)s)
for line in sys.stdin:
    stub = line.strip()
    out = {}
    out["metrics"], out["error"] = get(app(), metrics_path)
    if stub:
        host, port = stub.rsplit(":", 1)
        nginx = http.client.HTTPConnection(host, int(port), timeout=%(timeout)s)
        out["stub"], out["stub_error"] = get(nginx, "/stub_status")
    print(json.dumps(out), flush=True)
""".replace("%(timeout)s", str(TIMEOUT_S))


def container_agent(container: str, metrics_path: str) -> list[str]:
    return ["docker", "exec", "-i", container, "python3", "-u", "-c", AGENT, metrics_path]


def reap(process: subprocess.Popen[bytes], reader: threading.Thread) -> None:
    """The end of a helper process (killed after 3 s): its reader thread gone to the end of its output,
    its pipe closed."""
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    reader.join(timeout=3)
    if process.stdout is not None:
        process.stdout.close()


class Agent:
    """One AGENT in one container: asked with a newline, answers with one line, read by a thread. An
    answer later than its sample is dropped when it comes, not taken as the next sample's."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str]) -> None:
        """`command` runs AGENT (container_agent gives it for a container)."""
        self.name = name
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(env),
        )
        self.answers: deque[dict[str, str | None]] = deque(maxlen=2)
        self.unanswered = 0  # questions asked whose answer has not come yet
        self.late = 0  # of those, the ones whose sample gave up waiting
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.collect, daemon=True)
        self.thread.start()

    def collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.lock:
                self.unanswered = max(0, self.unanswered - 1)
                if self.late:
                    self.late -= 1
                    continue
            with contextlib.suppress(ValueError):
                self.answers.append(json.loads(line))

    def ask(self, stub: str = "") -> str:
        """Ask for the metrics, and nginx's stub_status at `stub` (host:port) when given; why it could
        not be asked, or ""."""
        if self.process.poll() is not None or self.process.stdin is None:
            return f"its agent (docker exec) exited with {self.process.returncode}"
        with self.lock:
            if self.unanswered:
                return "its agent is still answering an earlier sample"
            self.unanswered += 1
        try:
            self.process.stdin.write(f"{stub}\n".encode())
            self.process.stdin.flush()
        except OSError as error:
            return f"its agent cannot be asked: {describe(error)}"
        return ""

    def answer(self, within: float) -> dict[str, str | None] | None:
        deadline = time.monotonic() + within
        while not self.answers and time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.01)
        with self.lock:
            if self.answers:
                return self.answers.popleft()
            self.late = self.unanswered
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin:
                self.process.stdin.close()
        reap(self.process, self.thread)


class DockerLogs:
    """`docker logs -f` of one container from now on: its stdout lines (nginx's access log), kept until
    taken, at most MAX_LINES."""

    MAX_LINES = 200_000

    def __init__(self, container: str, env: Mapping[str, str]) -> None:
        self.process = subprocess.Popen(
            ["docker", "logs", "-f", "--since", f"{time.time():.3f}", container],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(env),
        )
        self.pending: deque[bytes] = deque(maxlen=self.MAX_LINES)
        self.thread = threading.Thread(target=self.collect, daemon=True)
        self.thread.start()

    def collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.pending.append(line)

    def read(self) -> bytes:
        taken = []
        while self.pending:
            taken.append(self.pending.popleft())
        return b"".join(taken)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        reap(self.process, self.thread)


class ContainerSource(Source):
    """Compose (`runtime` docker) or swarm: the app containers through agents, nginx's log through docker."""

    def __init__(self, handle: stack.Handle) -> None:
        self.env = handle.knob_environment()
        self.project = self.env.get("COMPOSE_PROJECT_NAME") or docker.DEFAULT_PROJECT
        self.backend = handle.backend
        self.metrics_path = handle.settings.app_metrics_path
        self.stub = f"nginx:{handle.settings.nginx_status_port}"
        self.agents: dict[str, Agent] = {}
        self.logs: DockerLogs | None = None
        self.listed_at = 0.0

    def list(self, service: str) -> dict[str, str]:
        """Running containers of a service on this engine: id -> name."""
        filters = self.backend.container_filters(self.project, service)
        command = ["docker", "ps", *filters, "--format", "{{.ID}} {{.Names}}"]
        listed = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=20)
        return dict(line.split(" ", 1) for line in listed.stdout.splitlines() if " " in line)

    def refresh(self) -> None:
        self.listed_at = time.monotonic()
        apps = self.list("app")
        for gone in set(self.agents) - set(apps):
            self.agents.pop(gone).close()
        for container, name in sorted(apps.items()):
            agent = self.agents.get(container)
            if agent is None or agent.process.poll() is not None:  # new, or restarted (same id)
                if agent is not None:
                    agent.close()
                command = container_agent(container, self.metrics_path)
                self.agents[container] = Agent(name, command, self.env)
        if self.logs is None or self.logs.process.poll() is not None:
            nginx = sorted(self.list("nginx"))
            self.logs = DockerLogs(nginx[0], self.env) if nginx else None

    def read(self) -> Raw:
        if time.monotonic() - self.listed_at >= CONTAINERS_EVERY_S:
            try:
                self.refresh()
            except (OSError, subprocess.SubprocessError) as error:
                return Raw(time.time(), errors=[f"docker: {describe(error)}"])
        raw = Raw(time.time())
        asked, stub = [], self.stub  # the first agent that takes the question asks nginx too
        for agent in self.agents.values():
            refused = agent.ask(stub)
            if refused:  # an instance not read: the tracker keeps its workers (not ended)
                raw.apps.append(AppScrape(agent.name, None, refused))
            else:
                asked.append((agent, bool(stub)))
                stub = ""
        deadline = time.monotonic() + TIMEOUT_S + 0.2
        for agent, asks_nginx in asked:
            answer = agent.answer(max(0.0, deadline - time.monotonic()))
            if answer is None:
                raw.apps.append(AppScrape(agent.name, None, "no answer from the container's agent"))
                continue
            raw.apps.append(AppScrape(agent.name, answer.get("metrics"), answer.get("error") or ""))
            if asks_nginx:
                raw.stub, raw.own_nginx_requests = answer.get("stub"), 1
                if answer.get("stub_error"):
                    raw.errors.append(f"nginx stub_status: {answer['stub_error']}")
        if self.logs is not None:
            raw.log = self.logs.read()
        return raw

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()
        if self.logs is not None:
            self.logs.close()


def source_for(handle: stack.Handle) -> Source:
    return LocalSource(handle) if handle.backend.processes_here else ContainerSource(handle)
