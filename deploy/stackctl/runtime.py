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
from deploy.stackctl.ports import LOOPBACK, free_port_value
from service.settings import Settings

if TYPE_CHECKING:
    from deploy.stackctl.docker import Container
    from deploy.stackctl.servers import AppServer

Name = Literal["local", "docker", "swarm"]


class Runtime(ABC):
    # A stack of this runtime is known only by the record its start left in the run dir (`make reload`
    # of a stack nobody recorded is refused); docker and swarm find theirs by project name.
    needs_record: ClassVar[bool] = False
    # What `make reload` still does when no knob changed.
    reload_anyway: ClassVar[str] = "reloading anyway (new workers, nginx re-reads its config)"

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

    def left_state(self, run_dir: Path) -> bool:
        """Whether a stack of this runtime left state in run_dir (`make down` with no record finds it)."""
        return False

    def abandon(self, run_dir: Path) -> None:
        """After a start that failed: stop what it may have left running (docker and swarm leave the
        containers of a failed start for `make logs`)."""
        return None

    # --- a running stack ------------------------------------------------------------------------------

    def url(self, settings: Settings) -> str:
        """Where clients reach the stack: its HTTPS URL when NGINX_TLS=1 (the plain port only redirects)."""
        return tls.https_url(settings) if settings.nginx_tls else self.plain_url(settings)

    def plain_url(self, settings: Settings) -> str:
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

    def containers(self, environ: Mapping[str, str], service: str | None = None) -> list[Container]:
        """The stack's compose containers (of `service`: only the running ones)."""
        return []

    def free_port_knobs(self) -> dict[str, str]:
        return {knob: free_port_value(knob) for knob in self.port_knobs()}
