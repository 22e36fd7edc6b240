import re
import subprocess
from pathlib import Path

import pytest

from deploy.stackctl.config import NGINX_TEMPLATE, effective, render_nginx
from service.settings import ConfigError


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
