"""The contract every runtime keeps: local processes (local.py), a compose project (docker.py), a swarm
stack (swarm.py). stack.py and the CLI drive a stack only through these methods; runtimes.py maps each
runtime's name to its implementation.

A stack is named by its run dir (where the local runtime keeps its state, and every runtime its rendered
files) and, for the engines, by its environment (COMPOSE_PROJECT_NAME, DOCKER_HOST). `config` is the
effective configuration to run; `environ` the environment its processes or compose see.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from deploy.stackctl import tls
from deploy.stackctl.config import Effective
from deploy.stackctl.errors import StackError
from deploy.stackctl.facts import HostFacts
from deploy.stackctl.ports import LOOPBACK, free_port_value
from deploy.stackctl.validation import Validation
from service.settings import Settings

if TYPE_CHECKING:
    from deploy.stackctl.docker import Container
    from deploy.stackctl.preflight import Where
    from deploy.stackctl.servers import AppServer

Name = Literal["local", "docker", "swarm"]


class Runtime(ABC):
    # A stack of this runtime is known only by the record its start left in the run dir (`make reload`
    # of a stack nobody recorded is refused); docker and swarm find theirs by project name.
    needs_record: ClassVar[bool] = False
    # What `make reload` still does when no knob changed.
    reload_anyway: ClassVar[str] = "reloading anyway (new workers, nginx re-reads its config)"
    # What callers may ask of a stack beyond the methods every runtime has; they ask these, never the name.
    # Its components are processes of this host: pids(), log_files() and log_pids() answer, signals reach.
    processes_here: ClassVar[bool] = False
    # It is a compose project on the engine: containers() answer, COMPOSE_PROJECT_NAME and COMPOSE_SUBNET
    # give a stack its own project beside others, `compose logs` has its logs.
    compose_project: ClassVar[bool] = False
    # It runs Locust's web UI itself (locust_ui), rather than Locust processes of this host.
    serves_locust_ui: ClassVar[bool] = False
    # Its app runs as tasks of a swarm service, which the manager reschedules when a node is lost.
    swarm_services: ClassVar[bool] = False
    # Why available() says no, in one line.
    unavailable: ClassVar[str] = ""

    @abstractmethod
    def up(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        """Start the stack and return once /healthz answers through nginx."""

    @abstractmethod
    def reload(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> None:
        """Apply `config` to the running stack without dropping requests."""

    @abstractmethod
    def scale(self, run_dir: Path, config: Effective, environ: Mapping[str, str], replicas: int) -> None:
        """Run `replicas` app instances behind nginx."""

    @abstractmethod
    def down(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        """Stop what `up` started (saying so, or that nothing runs) and wait until it is gone."""

    @abstractmethod
    def ps(self, run_dir: Path, environ: Mapping[str, str]) -> None:
        """Print the stack's processes, containers or tasks."""

    @abstractmethod
    def logs(self, run_dir: Path, environ: Mapping[str, str], follow: bool) -> None:
        """Print the last lines of every component's log (`follow`: and what comes, until Ctrl-C)."""

    @abstractmethod
    def port_knobs(self) -> tuple[str, ...]:
        """The knobs that bind ports of this host: set to free ports, a stack runs beside others."""

    @abstractmethod
    def app_where(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> Where:
        """Where this runtime runs the app's python (the local app virtualenv, the built image), ready:
        what the pre-flight and `make check`'s validators run in."""

    @abstractmethod
    def preflight(self, run_dir: Path, config: Effective, environ: Mapping[str, str]) -> str:
        """Load APP_MODULE where this runtime will run it, and start nothing (preflight.py): what the
        loader says when the app would run; StackError in one line when it would not."""

    def stop_service(self, run_dir: Path, environ: Mapping[str, str], service: str) -> None:
        """Stop one service of the running stack (its process, or its containers); the rest runs on."""
        raise StackError(f"stopping one service is not done for this runtime ({service})")

    def start_service(
        self, run_dir: Path, config: Effective, environ: Mapping[str, str], service: str
    ) -> None:
        """Start again what `stop_service` stopped, and wait until it is ready."""
        raise StackError(f"starting one service is not done for this runtime ({service})")

    def serving(self, server: AppServer) -> Runtime:
        """This runtime with `server` running the app (deploy/stackctl/servers.py). Containers run
        deploy/gunicorn.conf.py, so they take the servers that differ from the blueprint only by knobs."""
        if server.runs_gunicorn_conf:
            return self
        raise StackError(
            f"SERVER={server.name}: {server.process} runs on the local runtime only (RUNTIME=local); "
            "containers run gunicorn with deploy/gunicorn.conf.py"
        )

    def render(self, run_dir: Path, config: Effective) -> None:
        """Write the effective configs into the run dir and start nothing."""
        raise StackError("`render` is for the local runtime only (RUNTIME=local)")

    def available(self) -> bool:
        """Whether it can run here now (RUNTIME=auto takes the first available of runtimes.AUTO)."""
        return True

    def host_facts(self, settings: Settings) -> HostFacts:
        """The limits the ordering rules compare the knobs with, where this runtime's stack runs."""
        return HostFacts.local()

    def validations(self, config: Effective) -> list[Validation]:
        """`make check`: this runtime's own validators, beside nginx -t, gunicorn's and compose's."""
        return []

    def left_state(self, run_dir: Path) -> bool:
        """Whether a stack of this runtime left state in run_dir (`make down` with no record finds it)."""
        return False

    def abandon(self, run_dir: Path) -> None:
        """After a start that failed: stop what it may have left running (docker and swarm leave the
        containers of a failed start for `make logs`)."""
        return None

    # --- a running stack ------------------------------------------------------------------------------

    def url(self, settings: Settings, environ: Mapping[str, str] | None = None) -> str:
        """Where clients reach the stack: its HTTPS URL when NGINX_TLS=1 (the plain port only redirects).
        `environ`: the stack's environment, for a runtime whose address is not this host's (swarm)."""
        return tls.https_url(settings) if settings.nginx_tls else self.plain_url(settings, environ)

    def plain_url(self, settings: Settings, environ: Mapping[str, str] | None = None) -> str:
        return f"http://{LOOPBACK}:{settings.http_port}"

    def status_url(self, settings: Settings) -> str:
        """nginx's status server (stub_status, /metrics): on this host for local stacks only."""
        return f"http://{LOOPBACK}:{settings.nginx_status_port}"

    def pids(self, run_dir: Path) -> dict[str, int]:
        """The main process of each component by name (processes of this host only)."""
        return {}

    def app_pid(self, run_dir: Path) -> int | None:
        """The app server's main process (processes of this host only)."""
        return None

    def worker_pids(self, run_dir: Path) -> list[int]:
        """The app server's processes that serve requests (processes of this host only)."""
        return []

    def log_files(self, run_dir: Path) -> dict[str, Path]:
        """Each component's log file by name (files of this host only)."""
        return {}

    def log_pids(self, run_dir: Path) -> list[int]:
        """The processes that write the components' logs (processes of this host only)."""
        return []

    def containers(self, environ: Mapping[str, str], service: str | None = None) -> list[Container]:
        """The stack's compose containers (of `service`: only the running ones)."""
        return []

    def container_filters(self, project: str, service: str) -> list[str]:
        """`docker ps` arguments that list the running containers of `service` of this engine's stack."""
        raise StackError("this runtime runs no containers")

    def locust_ui(self, config: Effective, environ: Mapping[str, str], workers: int, web_port: int) -> None:
        """Locust's web UI as part of the stack, in the foreground until Ctrl-C (serves_locust_ui only)."""
        raise StackError("this runtime runs no Locust web UI of its own; run Locust on this host")

    def free_port_knobs(self) -> dict[str, str]:
        return {knob: free_port_value(knob) for knob in self.port_knobs()}
