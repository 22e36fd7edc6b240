"""The nginx image's entrypoint, run by the real /bin/sh with stand-in resolver tools on PATH.

It must find every replica of the app with glibc's `getent ahostsv4` (Debian bases) and with busybox
`nslookup` (Alpine, whose getent knows no ahostsv4 and prints only one address for `hosts`), and leave
following the replicas to nginx itself from nginx 1.27.3 on (`server ... resolve`; the docker tier runs it).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from deploy.stackctl.config import NGINX_TEMPLATE, effective, nginx_temp_dirs, nginx_variables, render_nginx
from deploy.stackctl.tools import find_nginx
from service.settings import load_settings
from tests.support.nginx_conf import websocket_locations

ENTRYPOINT = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "entrypoint.sh"

GLIBC_GETENT = """#!/bin/sh
[ "$1" = ahostsv4 ] && [ "$2" = app ] || exit 2
printf '172.28.80.5    STREAM app\\n172.28.80.5    DGRAM  \\n'
printf '172.28.80.3    STREAM \\n172.28.80.3    DGRAM  \\n'
"""
MUSL_GETENT = """#!/bin/sh
echo "Unknown database: $1" >&2
exit 1
"""
BUSYBOX_NSLOOKUP = """#!/bin/sh
printf 'Server:\\t\\t127.0.0.11\\nAddress:\\t127.0.0.11:53\\n\\nNon-authoritative answer:\\n'
printf 'Name:\\tapp\\nAddress: 172.28.80.7\\nName:\\tapp\\nAddress: 172.28.80.4\\n\\n'
printf 'Non-authoritative answer:\\nName:\\tapp\\nAddress: fd00::4\\n'
"""


def resolve(tmp_path: Path, host: str, **tools: str) -> list[str]:
    for name, script in tools.items():
        tool = tmp_path / name
        tool.write_text(script)
        tool.chmod(0o755)
    for name in ("awk", "grep", "sort", "sh", "cat", "tr", "sed"):
        (tmp_path / name).symlink_to(
            subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True, text=True).stdout.strip()
        )
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "resolve", host],
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_glibc_getent_finds_every_replica(tmp_path: Path) -> None:
    assert resolve(tmp_path, "app", getent=GLIBC_GETENT) == ["172.28.80.3", "172.28.80.5"]


def test_busybox_nslookup_finds_every_replica_when_getent_cannot(tmp_path: Path) -> None:
    assert resolve(tmp_path, "app", getent=MUSL_GETENT, nslookup=BUSYBOX_NSLOOKUP) == [
        "172.28.80.4",
        "172.28.80.7",
    ]


def test_an_address_needs_no_lookup(tmp_path: Path) -> None:
    assert resolve(tmp_path, "127.0.0.1", getent=MUSL_GETENT) == ["127.0.0.1"]


def test_an_unknown_host_resolves_to_nothing(tmp_path: Path) -> None:
    assert resolve(tmp_path, "nosuchhost", getent=MUSL_GETENT) == []


def test_render_creates_its_run_dir_and_the_temp_dirs_the_template_names(tmp_path: Path) -> None:
    run_dir = tmp_path / "not" / "yet" / "there"
    settings = load_settings(nginx_run_dir=str(run_dir), nginx_upstream="127.0.0.1:8000")
    variables = {**nginx_variables(settings), "NGINX_UPSTREAM": "127.0.0.1:8000"}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "reload"],  # renders, then fails to signal: no nginx runs here
        env={**os.environ, **variables, "NGINX_TEMPLATE": str(NGINX_TEMPLATE), "PATH": nginx_path()},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (run_dir / "nginx.conf").is_file(), result.stderr
    named = nginx_temp_dirs((run_dir / "nginx.conf").read_text())
    assert {d.name for d in named} == {"client_body", "proxy", "fastcgi", "uwsgi", "scgi"}
    assert all(d.is_dir() and d.parent == run_dir for d in named)


def nginx_path() -> str:
    return os.pathsep.join([str(Path(find_nginx()).parent), os.environ.get("PATH", "")])


# nginx -v says its version (on stderr); nginx -t passes: the docker tier checks the rendered `resolve`
# config on a real nginx 1.30, the test above the per-address one on this host's real nginx.
NGINX_OF_VERSION = """#!/bin/sh
[ "$1" = -v ] && echo "nginx version: nginx/{version}" >&2
exit 0
"""


@pytest.mark.parametrize(
    ("version", "upstream", "follows_by_itself"),
    [
        ("1.22.1", "tasks.app:8000", False),
        ("1.27.2", "tasks.app:8000", False),
        ("1.27.3", "tasks.app:8000", True),
        ("1.30.6", "tasks.app:8000", True),
        ("2.0", "tasks.app:8000", True),
        ("1.30.6", "172.28.80.3:8000", False),
    ],
)
def test_nginx_from_1_27_3_resolves_the_app_itself_older_gets_a_server_per_address(
    tmp_path: Path, version: str, upstream: str, follows_by_itself: bool
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, script in {"nginx": NGINX_OF_VERSION.format(version=version), "getent": GLIBC_GETENT}.items():
        (tools / name).write_text(script.replace("= app ]", "= tasks.app ]"))
        (tools / name).chmod(0o755)
    run_dir = tmp_path / "run"
    settings = load_settings(nginx_run_dir=str(run_dir))
    subprocess.run(
        ["sh", str(ENTRYPOINT), "reload"],  # renders, then fails to signal: no nginx runs here
        env={
            **os.environ, **nginx_variables(settings), "NGINX_UPSTREAM": upstream,
            "NGINX_TEMPLATE": str(NGINX_TEMPLATE), "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    upstream_block = (run_dir / "nginx.conf").read_text().split("upstream app {")[1].split("}")[0]
    servers = [line.strip() for line in upstream_block.splitlines() if line.strip().startswith("server ")]
    resolver = "resolver 127.0.0.11 valid=1s ipv6=off;" in (run_dir / "nginx.conf").read_text()
    if follows_by_itself:
        assert servers == ["server tasks.app:8000 resolve;"]
        assert "zone app 64k;" in upstream_block and resolver
    else:
        port = upstream.rsplit(":", 1)[1]
        expected = ["172.28.80.3", "172.28.80.5"] if upstream.startswith("tasks.") else ["172.28.80.3"]
        assert servers == [f"server {address}:{port};" for address in expected]
        assert "zone app" not in upstream_block and not resolver


@pytest.mark.parametrize("nginx", ["this host's", "1.30.6"])
def test_a_unix_socket_upstream_is_rendered_as_is_with_nothing_to_resolve(tmp_path: Path, nginx: str) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    if nginx != "this host's":  # a stand-in that says its version and passes `nginx -t`
        (tools / "nginx").write_text(NGINX_OF_VERSION.format(version=nginx))
        (tools / "nginx").chmod(0o755)
    (tools / "getent").write_text("#!/bin/sh\necho getent must not be asked >&2\nexit 1\n")
    (tools / "getent").chmod(0o755)
    run_dir = tmp_path / "run"
    socket = "unix:/run/blueprint/app.sock"
    settings = load_settings(nginx_run_dir=str(run_dir))
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "reload"],  # renders, then fails to signal: no nginx runs here
        env={
            **os.environ, **nginx_variables(settings), "NGINX_UPSTREAM": socket,
            "NGINX_TEMPLATE": str(NGINX_TEMPLATE), "PATH": os.pathsep.join([str(tools), nginx_path()]),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert (run_dir / "nginx.conf").is_file(), result.stderr  # `nginx -t` passed on it
    conf = (run_dir / "nginx.conf").read_text()
    upstream_block = conf.split("upstream app {")[1].split("}")[0]
    servers = [line.strip() for line in upstream_block.splitlines() if line.strip().startswith("server ")]
    assert servers == [f"server {socket};"]
    assert "resolver 127.0.0.11" not in conf and "zone app" not in upstream_block
    assert (run_dir / "upstream.addresses").read_text().split() == [socket]
    assert "getent must not be asked" not in result.stderr


def render_in_entrypoint(
    run_dir: Path, upstream: str, tools: Path, environ: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`reload` renders, then fails to signal: no nginx runs here."""
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "reload"],
        env={
            **os.environ, **nginx_variables(load_settings(nginx_run_dir=str(run_dir))), **environ,
            "NGINX_UPSTREAM": upstream, "NGINX_TEMPLATE": str(NGINX_TEMPLATE),
            "PATH": os.pathsep.join([str(tools), nginx_path()]),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize("nginx", ["this host's", "1.30.6"])
def test_the_websocket_locations_are_those_stackctl_renders(tmp_path: Path, nginx: str) -> None:
    """nginx 1.22 (this host's, `nginx -t` for real: one server per address) and >= 1.27.3 (`resolve`)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    upstream = "127.0.0.1:8000"
    if nginx != "this host's":
        upstream = "tasks.app:8000"
        (tools / "nginx").write_text(NGINX_OF_VERSION.format(version=nginx))
        (tools / "getent").write_text(GLIBC_GETENT.replace("= app ]", "= tasks.app ]"))
        for tool in tools.iterdir():
            tool.chmod(0o755)
    knobs = {"NGINX_WEBSOCKET_PATHS": "/chat/ /api/v1/stream/ws", "NGINX_WS_READ_TIMEOUT": "9"}
    result = render_in_entrypoint(tmp_path / "run", upstream, tools, knobs)
    conf = tmp_path / "run" / "nginx.conf"
    assert conf.is_file(), result.stderr
    rendered = conf.read_text()
    location = ["proxy_read_timeout 9s;", "proxy_send_timeout 9s;", "lingering_close always;"]
    location.append("proxy_pass http://app;")
    expected = {argument: location for argument in ("/chat/", "= /chat", "= /api/v1/stream/ws")}
    assert websocket_locations(rendered) == expected
    if nginx == "this host's":  # the same upstream either way: the very config the local runtime runs
        knobs.update(NGINX_RUN_DIR=str(tmp_path / "run"), NGINX_UPSTREAM=upstream)
        assert rendered == render_nginx(effective(environ=knobs, env_file=None).settings)
    else:
        assert "server tasks.app:8000 resolve;" in rendered


@pytest.mark.parametrize("paths", ["/", "chat/", "/chat/{x}", "/ws/ /*", "/ws/;deny"])
def test_a_websocket_path_that_would_break_the_config_is_refused(tmp_path: Path, paths: str) -> None:
    """stackctl refuses these first (service/websocket_paths.py); the entrypoint too, for compose alone."""
    knobs = {"NGINX_WEBSOCKET_PATHS": paths}
    result = render_in_entrypoint(tmp_path / "run", "127.0.0.1:8000", tmp_path, knobs)
    assert result.returncode == 1
    bad = paths.split()[-1]
    assert result.stderr.strip().splitlines() == [
        f"blueprint-nginx: NGINX_WEBSOCKET_PATHS='{paths}': '{bad}' must be a path other than /, of letters, "
        "digits, . _ ~ - and / only"
    ]
    assert not (tmp_path / "run" / "nginx.conf").exists()
