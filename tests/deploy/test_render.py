import re
import subprocess
from pathlib import Path

import pytest

from deploy.stackctl.config import NGINX_TEMPLATE, effective, render_nginx
from service.settings import ConfigError
from tests.support.nginx_conf import public_locations, websocket_locations


def test_environment_beats_dotenv_beats_profile_beats_default(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("GUNICORN_KEEPALIVE=40\nNGINX_PROXY_READ_TIMEOUT=50\n")
    config = effective(environ={"GUNICORN_KEEPALIVE": "45"}, env_file=dotenv)
    assert config.values["GUNICORN_KEEPALIVE"].value == "45"
    assert config.values["GUNICORN_KEEPALIVE"].source == "environment"
    assert config.values["NGINX_PROXY_READ_TIMEOUT"].source == ".env"
    assert config.values["APP_MAX_DELAY"].source == "default"
    assert config.settings.gunicorn_keepalive == 45


def test_unknown_profile_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"PROFILE='nope': no file deploy/profiles/nope.env \(known: .*default"
    ):
        effective(environ={"PROFILE": "nope"}, env_file=None)


def test_only_nginx_knobs_are_substituted_and_nginx_variables_stay() -> None:
    text = render_nginx(effective(environ={}, env_file=None).settings)
    assert "${" not in text
    assert "$remote_addr" in text and "$req_id" in text
    placeholders = set(re.findall(r"\$\{([A-Z0-9_]+)\}", NGINX_TEMPLATE.read_text()))
    assert placeholders and all(name.startswith("NGINX_") for name in placeholders)


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    env = {"NGINX_RUN_DIR": str(tmp_path), "NGINX_ERROR_LOG": str(tmp_path / "e.log")}
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx(effective(environ=env, env_file=None).settings))
    result = subprocess.run(["nginx", "-t", "-c", str(conf), "-e", "stderr"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def passes_nginx_t(rendered: str, tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(rendered)
    result = subprocess.run(["nginx", "-t", "-c", str(conf), "-e", "stderr"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


WEBSOCKET_LOCATION = [
    "proxy_read_timeout 75s;",
    "proxy_send_timeout 75s;",
    "lingering_close always;",
    "proxy_pass http://app;",
]


def test_the_default_websocket_paths_render_the_demos_two_locations() -> None:
    render = render_nginx(effective(environ={}, env_file=None).settings)
    found = public_locations(render)
    assert websocket_locations(render) == {"/ws/": WEBSOCKET_LOCATION, "= /ws": WEBSOCKET_LOCATION}
    assert found["/"] == ["proxy_pass http://app;"]  # every other path: the server's HTTP timeouts


def test_each_websocket_path_gets_the_websocket_location_a_prefix_also_without_its_slash(
    tmp_path: Path,
) -> None:
    env = {
        "NGINX_RUN_DIR": str(tmp_path),
        "NGINX_ERROR_LOG": str(tmp_path / "e.log"),
        "NGINX_WEBSOCKET_PATHS": "/chat/ /api/v1/stream/ws /rooms.v2/",
        "NGINX_WS_READ_TIMEOUT": "9",
    }
    rendered = render_nginx(effective(environ=env, env_file=None).settings)
    found = public_locations(rendered)
    websocket = [line.replace("75s", "9s") for line in WEBSOCKET_LOCATION]
    sockets = ["/chat/", "= /chat", "= /api/v1/stream/ws", "/rooms.v2/", "= /rooms.v2"]
    assert websocket_locations(rendered) == dict.fromkeys(sockets, websocket)
    assert "/ws/" not in found and "= /ws" not in found
    assert not any("proxy_set_header" in line for body in found.values() for line in body)
    assert "{{" not in rendered and not re.search(r"^\s*#\[(each|end)", rendered, re.MULTILINE)
    passes_nginx_t(rendered, tmp_path)


def test_no_websocket_paths_renders_no_websocket_location(tmp_path: Path) -> None:
    env = {"NGINX_RUN_DIR": str(tmp_path), "NGINX_ERROR_LOG": str(tmp_path / "e.log")}
    rendered = render_nginx(effective(environ={**env, "NGINX_WEBSOCKET_PATHS": ""}, env_file=None).settings)
    assert websocket_locations(rendered) == {}
    passes_nginx_t(rendered, tmp_path)


def test_a_template_without_its_websocket_block_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "nginx.conf.template"
    template.write_text(NGINX_TEMPLATE.read_text().replace("#[end each]", "# (the end marker lost)"))
    with pytest.raises(ConfigError, match=r"expected one #\[each websocket_location\] block, found 0"):
        render_nginx(effective(environ={}, env_file=None).settings, template)


@pytest.mark.parametrize(
    ("knobs", "rendered", "left_out"),
    [
        ({}, [], ["limit_req zone=", "limit_conn per_client_conn", "add_header Strict-Transport-Security"]),
        (
            {"NGINX_LIMIT_REQ_ENABLED": "1"},
            ["limit_req zone=per_client_rate burst=200 nodelay;"],
            ["limit_conn "],
        ),
        ({"NGINX_LIMIT_CONN_ENABLED": "1", "NGINX_LIMIT_CONN": "7"}, ["limit_conn per_client_conn 7;"], []),
        ({"NGINX_TLS": "1"}, ["add_header Strict-Transport-Security $hsts always;"], ["limit_req zone="]),
    ],
)
def test_lines_that_would_cost_every_request_for_nothing_are_rendered_only_when_on(
    knobs: dict[str, str], rendered: list[str], left_out: list[str]
) -> None:
    """Off, a limit with an empty key and the HSTS header without TLS do nothing but still cost nginx
    ~1,100 and ~800 instructions per request (docs/SERVERS.md): their lines are left out then."""
    lines = render_nginx(effective(environ=knobs, env_file=None).settings).splitlines()
    directives = [line.strip() for line in lines if not line.strip().startswith("#")]
    for line in rendered:
        assert line in directives, f"{knobs}: {line} missing"
    for start in left_out:
        assert not any(d.startswith(start) for d in directives), f"{knobs}: {start} rendered"
