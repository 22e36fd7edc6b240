"""The app image of an app other than the demo (APP_SRC, APP_REQUIREMENTS), for the docker and swarm runtimes.

The repository root is the demo's build context (.dockerignore sends only what its images copy). For another
app, stackctl stages a context under the run dir — the platform's files, the app's requirements as
`app/requirements/requirements.txt` (with the files it includes), its code as `app/src/` (APP_SRC may lie
anywhere on this host), the wheelhouse with OFFLINE=1 — and a compose overlay, `<run dir>/compose.app.yml`,
that builds the app service from it and tags the image for that app: `blueprint-app:<APP_SRC's name>-<hash
of the paths>`, so the demo's `blueprint-app:local` and each app's image stay apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from deploy.stackctl.appenv import WHEELHOUSE
from deploy.stackctl.config import ROOT
from deploy.stackctl.errors import StackError
from deploy.stackctl.requirements import files_of
from service.platform.loader import source_problems
from service.settings import Settings

DEMO_IMAGE = "blueprint-app:local"  # docker-compose.yml's app image
CONTEXT = "app-image"
OVERLAY = "compose.app.yml"
# What deploy/Dockerfile.app copies from the repository (besides service/).
IMAGE_REQUIREMENTS = "/build/app/requirements/requirements.txt"  # where the Dockerfile's pip reads them
IMAGE_PINS = "/build/platform.txt"
PLATFORM_FILES = (
    "pyproject.toml",
    "deploy/__init__.py",
    "deploy/pins.py",
    "deploy/gunicorn.conf.py",
    "deploy/healthcheck.py",
    "deploy/Dockerfile.app",
)
# Never copied from APP_SRC (or service/): caches, virtualenvs, version control.
SKIPPED = {"__pycache__", ".git", ".hg", ".venv", "venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def own_app(settings: Settings) -> bool:
    """Whether the image is another app's than the demo's (built from a staged context)."""
    return bool(settings.app_src or settings.app_requirements)


def image(settings: Settings) -> str:
    """The app image's tag: the demo's, or one that names the app (APP_SRC's directory) and differs for
    every pair of APP_SRC and APP_REQUIREMENTS paths."""
    if not own_app(settings):
        return DEMO_IMAGE
    src = Path(settings.app_src).resolve() if settings.app_src else None
    requirements = Path(settings.app_requirements).resolve() if settings.app_requirements else None
    name = src.name if src else settings.app_module.split(":")[0].split(".")[0]
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip(".-")[:40] or "app"
    digest = hashlib.sha256(f"{src}\n{requirements}".encode()).hexdigest()[:8]
    return f"blueprint-app:{slug}-{digest}"


def run_dir_of(env: Mapping[str, str]) -> Path | None:
    """A stack's run dir, from its environment: nginx's writable directory is pinned inside it."""
    nginx_dir = env.get("NGINX_RUN_DIR")
    return Path(nginx_dir).parent if nginx_dir else None


def overlay_path(env: Mapping[str, str], settings: Settings) -> Path | None:
    """The overlay `stage` wrote for this stack's app, when it is another app's and was staged."""
    run_dir = run_dir_of(env)
    if run_dir is None or not own_app(settings):
        return None
    path = run_dir / OVERLAY
    return path if path.is_file() else None


def ignore(skip: Path) -> Callable[[str, list[str]], set[str]]:
    """What copytree leaves out: caches, virtualenvs, version control, and `skip` (the run dir, when APP_SRC
    holds it)."""

    def ignored(directory: str, names: list[str]) -> set[str]:
        return {
            name
            for name in names
            if name in SKIPPED or name.endswith(SKIPPED_SUFFIXES) or Path(directory, name).resolve() == skip
        }

    return ignored


def stage(run_dir: Path, settings: Settings, offline: bool) -> Path:
    """Write the app's build context and the compose overlay that builds from it; returns the overlay."""
    problems = source_problems(settings)
    if problems:
        raise StackError(problems[0])
    context = (run_dir / CONTEXT).resolve()
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for name in PLATFORM_FILES:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    skip = ignore(run_dir.resolve())
    shutil.copytree(ROOT / "service", context / "service", ignore=skip)
    app = context / "app"
    app.mkdir()
    if settings.app_requirements:
        requirements = Path(settings.app_requirements).resolve()
        for path in files_of(requirements):  # it and the files it includes, beside it as pip expects
            if not path.is_relative_to(requirements.parent):
                raise StackError(
                    f"APP_REQUIREMENTS={settings.app_requirements}: it includes {path}, outside its own "
                    "directory; the image build copies that directory's files only"
                )
            where = path.relative_to(requirements.parent)
            target = app / "requirements" / ("requirements.txt" if path == requirements else where)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    if settings.app_src:
        shutil.copytree(Path(settings.app_src).resolve(), app / "src", ignore=skip)
    if offline and WHEELHOUSE.is_dir():
        link_tree(WHEELHOUSE, context / "wheelhouse")
    (context / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
    overlay = run_dir / OVERLAY
    service = {"build": {"context": str(context)}, "image": image(settings)}
    header = "# written by stackctl (deploy/stackctl/appimage.py): the image of APP_SRC, APP_REQUIREMENTS\n"
    overlay.write_text(header + json.dumps({"services": {"app": service}}, indent=2) + "\n")
    return overlay


def link_tree(source: Path, target: Path) -> None:
    """The wheelhouse in the context: hard links where the filesystem allows (it can be large), else
    copies."""
    target.mkdir()
    for path in source.iterdir():
        if path.is_file():
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)
