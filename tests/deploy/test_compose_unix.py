"""deploy/compose.unix.yml, the overlay for GUNICORN_BIND=unix:... — no engine needed: both containers mount
one volume, the app binds inside it, nginx connects to that same path, and the volume's owner and group are
the users the two Dockerfiles run as."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from deploy.stackctl.docker import COMPOSE_FILE, UNIX_OVERLAY
from service.settings import load_settings, unix_socket_path

OVERLAY: dict[str, Any] = yaml.safe_load(UNIX_OVERLAY.read_text())
BASE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())


def dockerfile_user(name: str) -> tuple[int, int | None]:
    text = (COMPOSE_FILE.parent / "deploy" / name).read_text()
    user = re.findall(r"^USER (\d+)(?::(\d+))?$", text, re.MULTILINE)[-1]
    return int(user[0]), int(user[1]) if user[1] else None


def mount(service: str) -> tuple[str, str]:
    (volume,) = OVERLAY["services"][service]["volumes"]
    name, target = volume.split(":")
    return name, target


def test_app_and_nginx_meet_at_one_socket_on_one_volume() -> None:
    assert mount("app") == mount("nginx")
    volume, target = mount("app")
    bind = OVERLAY["services"]["app"]["environment"]["GUNICORN_BIND"]
    assert OVERLAY["services"]["nginx"]["environment"]["NGINX_UPSTREAM"] == bind
    path = unix_socket_path(bind)
    assert path is not None and PurePosixPath(path).parent == PurePosixPath(target)
    assert load_settings(gunicorn_bind=bind).upstream == bind  # passes the knob's own validation
    assert volume in OVERLAY["volumes"] and set(OVERLAY["services"]) <= set(BASE["services"])


def test_the_volume_belongs_to_the_app_user_and_admits_nginx_by_its_group() -> None:
    options = dict(
        option.split("=") for option in OVERLAY["volumes"]["app-socket"]["driver_opts"]["o"].split(",")
    )
    app_uid, _ = dockerfile_user("Dockerfile.app")
    nginx_uid, nginx_gid = dockerfile_user("Dockerfile.nginx")
    assert int(options["uid"]) == app_uid and int(options["gid"]) == nginx_gid
    mode = int(options["mode"], 8)
    assert mode & 0o700 == 0o700 and mode & 0o050 == 0o050 and mode & 0o007 == 0, oct(mode)
    assert OVERLAY["volumes"]["app-socket"]["driver_opts"]["type"] == "tmpfs"
    assert nginx_uid != app_uid


def test_uvicorn_is_told_to_believe_the_forwarded_headers_it_cannot_check() -> None:
    # No peer address on a unix socket: only '*' lets the app see nginx's X-Forwarded-For.
    assert OVERLAY["services"]["app"]["environment"]["GUNICORN_FORWARDED_ALLOW_IPS"] == "*"
