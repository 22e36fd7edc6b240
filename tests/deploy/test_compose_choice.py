"""`make` drives Compose v2 (`docker compose`) when the plugin answers, else standalone docker-compose 1.x."""

import stat
from pathlib import Path

import pytest

from deploy.stackctl.docker import compose_command
from deploy.stackctl.errors import StackError


def executable(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


def test_v2_plugin_is_preferred_when_it_answers(bin_dir: Path) -> None:
    executable(bin_dir, "docker", '[ "$1 $2" = "compose version" ] && echo "Docker Compose version v2.30.0"')
    executable(bin_dir, "docker-compose", "echo 'docker-compose version 1.29.2'")
    assert compose_command() == ["docker", "compose"]


def test_standalone_1_29_is_used_without_the_plugin(bin_dir: Path) -> None:
    executable(bin_dir, "docker", "echo \"docker: 'compose' is not a docker command.\" >&2; exit 1")
    executable(bin_dir, "docker-compose", "echo 'docker-compose version 1.29.2'")
    assert compose_command() == ["docker-compose"]


def test_neither_names_what_to_install(bin_dir: Path) -> None:
    executable(bin_dir, "docker", "exit 1")
    with pytest.raises(StackError, match="install one"):
        compose_command()
