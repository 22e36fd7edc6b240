"""The app's Python on this host (the local runtime): with APP_REQUIREMENTS, a virtualenv of the platform's
pins and the app's requirements, `.run/venvs/app-<hash>`; without, the tooling virtualenv this runs in,
which holds the platform and the demo's framework.

The hash covers the platform's pins, the requirements file (and the files it includes with -r/-c) and this
Python's version, so a changed pin or file builds a new virtualenv and an unchanged one is reused. pip
resolves the platform's pins and the app's requirements together; when they conflict, the build stops with
one line naming both (requirements.failure_line). OFFLINE=1 installs from ./wheelhouse only.

The platform's code is not installed into it: the app's processes get the repository root on PYTHONPATH
(`pythonpath`), and APP_SRC first on the import path (the loader puts it there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.stackctl.config import ROOT
from deploy.stackctl.errors import StackError
from deploy.stackctl.requirements import Source, digest, failure_line, platform_pins
from service.settings import Settings

VENVS = ROOT / ".run" / "venvs"
WHEELHOUSE = ROOT / "wheelhouse"
BUILD_TIMEOUT_S = 1800


def offline(environ: Mapping[str, str] | None = None) -> bool:
    """OFFLINE=1: install from ./wheelhouse only, never from an index (a build input, not a knob)."""
    return (os.environ if environ is None else environ).get("OFFLINE") == "1"


def pythonpath(environ: Mapping[str, str] | None = None) -> str:
    """PYTHONPATH for the app's processes: the repository root (the platform), then what was there."""
    before = (os.environ if environ is None else environ).get("PYTHONPATH", "")
    return os.pathsep.join([str(ROOT), *filter(None, before.split(os.pathsep))])


@dataclass(frozen=True)
class Venv:
    """A virtualenv built once for what it installs (`pins` and the file `requirements`), found again by the
    hash of both and this Python's version. `knob` names the requirements in errors."""

    name: str
    requirements: Path | None
    pins: tuple[str, ...]
    knob: str

    @property
    def path(self) -> Path:
        return VENVS / f"{self.name}-{digest(self.requirements, self.pins, sys.version)}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def ensure(self, offline: bool = False) -> Path:
        """Its python, after building it if it does not exist yet. Raises StackError in one line."""
        if self.python.exists():
            return self.python
        VENVS.mkdir(parents=True, exist_ok=True)
        # Built aside and renamed when complete: an interrupted build is never taken for a finished one.
        scratch = VENVS / f".building-{self.path.name}-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        where = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        print(f"{self.knob}: building {where} (pip; once per change of the pins) ...", flush=True)
        try:
            self.build(scratch, offline)
            with contextlib.suppress(OSError):  # another process finished the same virtualenv first
                scratch.rename(self.path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self.python

    def build(self, scratch: Path, offline: bool) -> None:
        created = subprocess.run(
            [sys.executable, "-m", "venv", str(scratch)], capture_output=True, text=True, timeout=300
        )
        if created.returncode != 0:
            last = (created.stderr.strip().splitlines() or ["no output"])[-1]
            raise StackError(f"{self.knob}: `{sys.executable} -m venv` failed: {last}")
        pins = scratch / "pins.txt"
        pins.write_text("\n".join(self.pins) + "\n")
        command = [str(scratch / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        command += ["--no-input", "-r", str(pins)]
        command += ["-r", str(self.requirements)] if self.requirements else []
        command += ["--no-index", "--find-links", str(WHEELHOUSE)] if offline else []
        try:
            installed = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise StackError(f"{self.knob}: pip did not finish within {BUILD_TIMEOUT_S} s") from None
        if installed.returncode != 0:
            sources = [Source(str(pins), list(self.pins), platform=True)]
            if self.requirements:
                lines = self.requirements.read_text(errors="replace").splitlines()
                sources.append(Source(str(self.requirements), lines, platform=False))
            output = installed.stdout + installed.stderr
            line = failure_line(output, self.knob, {s.path: s for s in sources}, self.pins)
            if offline:
                line += f" (OFFLINE=1: only {WHEELHOUSE} was searched; `make wheelhouse RUNTIME=local`)"
            raise StackError(line)


def cached_venv(name: str, requirements: Path | None, pins: Sequence[str], knob: str) -> Venv:
    absolute = requirements.resolve() if requirements else None
    return Venv(name, absolute, tuple(pins), knob)


def app_venv(settings: Settings) -> Venv | None:
    """The app's own virtualenv, or None: without APP_REQUIREMENTS the app runs in the tooling one."""
    if not settings.app_requirements:
        return None
    knob = f"APP_REQUIREMENTS={settings.app_requirements}"
    return cached_venv("app", Path(settings.app_requirements), platform_pins(), knob)


def app_python(settings: Settings) -> Path:
    """The python the stack's gunicorn runs with (built or not)."""
    venv = app_venv(settings)
    return venv.python if venv else Path(sys.executable)


def ensure_app_python(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The python the stack's gunicorn runs with, its virtualenv built first when needed."""
    venv = app_venv(settings)
    if venv is None:
        return Path(sys.executable)
    if not Path(settings.app_requirements).is_file():
        raise StackError(
            f"APP_REQUIREMENTS={settings.app_requirements}: no such file (seen from {os.getcwd()})"
        )
    return venv.ensure(offline(environ))
