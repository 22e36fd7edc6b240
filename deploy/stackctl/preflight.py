"""The pre-flight of `make up` and `make check`: APP_MODULE loaded where the stack will run it, before
anything starts — this host's app environment (appenv.py) for the local runtime, the built app image for
docker and swarm.

`python -m service.platform.loader --lifespan` imports the app, refuses a platform path that shadows one of
its routes, and runs its lifespan startup and shutdown within APP_STARTUP_TIMEOUT. On failure the stack
stops with the loader's one line (it names APP_MODULE and the app's own error) and where the traceback is:
`<run dir>/preflight.log`. Warnings (a platform path inside a catch-all route) are printed and let pass.

When gunicorn itself halts while starting (a worker exit 3 or 4: a startup that fails only under gunicorn),
`halted_line` finds the worker's own `APP_MODULE=...` line in its log.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.stackctl.config import KNOBS, ROOT, Effective
from deploy.stackctl.errors import StackError

LOG = "preflight.log"
LOADER = ("-m", "service.platform.loader", "--lifespan")
# Room for the imports around the lifespan (APP_STARTUP_TIMEOUT times startup and shutdown only).
IMPORT_ALLOWANCE_S = 120.0
# A gunicorn error line: `[2026-01-01 12:00:00 +0000] [123] [ERROR] message`.
GUNICORN_PREFIX = re.compile(r"^\[[^\]]*\] \[\d+\] \[[A-Z]+\] ")
# Knobs that are host paths or inputs of the image's build, not of the app's processes in a container.
HOST_ONLY = {"APP_SRC", "APP_REQUIREMENTS"}
# Set by the image and docker-compose.yml for every app container (the container layout, not knobs).
CONTAINER_FIXED = {"GUNICORN_BIND": "0.0.0.0:8000"}
# The loader's own failure lines start with the variable they are about (APP_MODULE=, APP_SRC=, ...).
KNOB_LINE = re.compile(r"^[A-Z][A-Z0-9_]*=")


@dataclass(frozen=True)
class Where:
    """Where the app's python runs: `prefix + args` runs it there, with `env` and in `cwd`."""

    description: str  # for the lines that say where something ran
    prefix: Sequence[str]
    env: Mapping[str, str]
    gunicorn_conf: str  # deploy/gunicorn.conf.py as that python sees it
    cwd: Path = field(default=ROOT)
    in_image: bool = False  # a throwaway container of the app image, not a python of this host

    def run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *args], cwd=self.cwd, env=dict(self.env), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def app_knobs(config: Effective) -> dict[str, str]:
    """The knobs an app container receives: the app's, gunicorn's and uvicorn's (docker-compose.yml)."""
    return {
        name: value.value
        for name, value in config.values.items()
        if name.startswith(("APP_", "GUNICORN_", "UVICORN_")) or name == "WEB_CONCURRENCY"
        if name not in HOST_ONLY
    } | CONTAINER_FIXED


def on_host(python: Path, env: Mapping[str, str]) -> Where:
    where = python.parent.parent
    shown = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
    description = "the tooling virtualenv" if python == Path(sys.executable) else f"virtualenv {shown}"
    return Where(description, [str(python)], env, str(ROOT / "deploy" / "gunicorn.conf.py"))


def in_image(image: str, config: Effective, environ: Mapping[str, str]) -> Where:
    """`docker run` of the app image as compose runs it: its user, a read-only root with /tmp on tmpfs,
    the app's knobs; no network at all."""
    knobs = app_knobs(config)
    prefix = ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp:size=64m"]
    prefix += [arg for name in knobs for arg in ("-e", name)]  # values from the environment, not argv
    prefix += [image, "python3"]
    conf = "/app/deploy/gunicorn.conf.py"
    return Where(f"image {image}", prefix, {**environ, **knobs}, conf, in_image=True)


def loader_env(config: Effective, environ: Mapping[str, str] | None, pythonpath: str) -> dict[str, str]:
    """What the loader sees on this host: the effective knobs over `environ`, the platform importable."""
    base = dict(os.environ if environ is None else environ)
    for name in ("STACK_ENV_FILE", "PROMETHEUS_MULTIPROC_DIR"):
        base.pop(name, None)  # the knobs below decide; no stack's metrics directory is written to
    return {**base, **{name: v.value for name, v in config.values.items() if name in KNOBS},
            "PYTHONPATH": pythonpath}  # fmt: skip


def check_app(where: Where, config: Effective, log: Path) -> str:
    """Load APP_MODULE there and run its lifespan: the loader's line when it passes (its warnings printed
    to stderr); StackError with its one line and where the traceback went when it does not."""
    settings = config.settings
    timeout = 2 * settings.app_startup_timeout + IMPORT_ALLOWANCE_S
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = where.run(LOADER, timeout)
    except subprocess.TimeoutExpired:
        raise StackError(
            f"APP_MODULE={settings.app_module}: loading it in {where.description} did not finish within "
            f"{timeout:.0f} s (an import that hangs?)"
        ) from None
    output = result.stderr.strip()
    log.write_text(
        f"# python -m service.platform.loader --lifespan in {where.description}: exit {result.returncode}\n"
        f"{result.stdout}{result.stderr}"
    )
    lines = output.splitlines()
    if result.returncode != 0:
        said = next((line for line in lines if KNOB_LINE.match(line)), None)
        if said is None:  # not the loader's own line: the loader itself could not run there
            last = lines[-1] if lines else f"exit {result.returncode}"
            said = f"APP_MODULE={settings.app_module}: the loader failed in {where.description}: {last}"
        more = f"; traceback in {log}" if len(lines) > 1 else ""
        raise StackError(f"{said}{more}")
    for line in lines:
        if line.startswith("warning:"):
            print(line, file=sys.stderr)
    return (result.stdout.strip().splitlines() or [""])[-1]


def halted_line(log_text: str) -> str | None:
    """The last `APP_MODULE=...` line a worker logged (gunicorn's prefix removed), or None."""
    found = None
    for line in log_text.splitlines():
        line = GUNICORN_PREFIX.sub("", line.strip())
        if line.startswith("APP_MODULE="):
            found = line
    return found
