"""`stackctl check` and the refusal in `up` / `reload`, run as the real commands (nginx -t, gunicorn
--check-config)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy.stackctl.config import PROFILES_DIR
from tests.support.stack import make_stack

pytestmark = pytest.mark.stack

PROFILES = sorted(path.stem for path in PROFILES_DIR.glob("*.env"))

# One knob pair per rule, each broken; the rule's two names must both appear in the output.
BROKEN = {
    "rule 1": {"NGINX_UPSTREAM_KEEPALIVE_TIMEOUT": "30", "GUNICORN_KEEPALIVE": "2"},
    "rule 2": {"UVICORN_WS_PING_INTERVAL": "60", "NGINX_WS_READ_TIMEOUT": "60"},
    "rule 3": {"APP_REQUEST_TIMEOUT": "45", "NGINX_PROXY_READ_TIMEOUT": "30"},
    "rule 4": {"GUNICORN_GRACEFUL_TIMEOUT": "40", "COMPOSE_STOP_GRACE_PERIOD": "30"},
    "rule 5": {"APP_EXPECTED_BLOCKING": "40", "GUNICORN_TIMEOUT": "30"},
    "rule 6": {"NGINX_WORKER_CONNECTIONS": "12000", "NGINX_WORKER_RLIMIT_NOFILE": "10000"},
    "rule 7": {"UVICORN_LIMIT_CONCURRENCY": "50", "NGINX_UPSTREAM_KEEPALIVE": "64"},
}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_passes_the_real_check(tmp_path: Path, profile: str) -> None:
    result = make_stack(tmp_path, PROFILE=profile).stackctl("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok nginx -t" in result.stdout
    assert "ok gunicorn --check-config" in result.stdout
    assert f"profile {profile}" in result.stdout
    assert "check ok: all 7 rules hold" in result.stdout


def test_the_table_shows_value_source_and_layer(tmp_path: Path) -> None:
    result = make_stack(tmp_path, PROFILE="io-heavy", GUNICORN_KEEPALIVE="25").stackctl("check")
    rows = {
        line.split("│")[0].strip(): [c.strip() for c in line.split("│")]
        for line in result.stdout.splitlines()
    }
    assert rows["GUNICORN_KEEPALIVE"][1:] == ["25", "environment", "gunicorn"]
    assert rows["APP_MAX_TEXT_LENGTH"][1:] == ["10000", "default", "app"]
    assert rows["UVICORN_LIMIT_CONCURRENCY"][2:] == ["profile:io-heavy", "uvicorn"]


@pytest.fixture(scope="module")
def all_rules_broken(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    knobs = {name: value for pair in BROKEN.values() for name, value in pair.items()}
    return make_stack(tmp_path_factory.mktemp("broken"), **knobs).stackctl("check")


def test_a_broken_config_fails_the_check(all_rules_broken: subprocess.CompletedProcess[str]) -> None:
    assert all_rules_broken.returncode == 1
    assert all_rules_broken.stdout.strip().splitlines()[-1].startswith("check failed: 7 rule violation(s)")


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_broken_rule_names_both_knobs_and_values(
    all_rules_broken: subprocess.CompletedProcess[str], rule: str
) -> None:
    errors = [line for line in all_rules_broken.stdout.splitlines() if line.startswith(f"✗ error {rule} ")]
    assert len(errors) == 1, all_rules_broken.stdout
    for name, value in BROKEN[rule].items():
        assert f"{name}={value}" in errors[0]


def test_a_validator_failure_fails_the_check(tmp_path: Path) -> None:
    result = make_stack(tmp_path, GUNICORN_WORKER_CLASS="no.such.Worker").stackctl("check")
    assert result.returncode == 1
    assert "failed gunicorn --check-config" in result.stdout


def test_up_refuses_a_rejected_config_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, **BROKEN["rule 1"])
    result = stack.stackctl("up")
    assert result.returncode == 1
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("stackctl up: refused: 1 ordering rule(s) broken")
    assert "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT=30" in summary and "GUNICORN_KEEPALIVE=2" in summary
    assert "ALLOW_UNSAFE_CONFIG=1" in summary
    assert not (stack.run_dir / "state.json").exists()


def test_reload_refuses_a_rejected_config_and_the_stack_keeps_running(tmp_path: Path) -> None:
    import httpx2

    stack = make_stack(tmp_path)
    stack.up()
    try:
        result = stack.stackctl("reload", APP_REQUEST_TIMEOUT="45")
        assert result.returncode == 1
        assert "APP_REQUEST_TIMEOUT=45" in result.stderr and "NGINX_PROXY_READ_TIMEOUT=30" in result.stderr
        info = httpx2.get(f"{stack.url}/api/info").json()
        assert info["settings"]["app_request_timeout"] == 15
    finally:
        stack.down()


CHAT = """
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute


async def echo(websocket):
    await websocket.accept()


app = Starlette(routes=[WebSocketRoute("/chat/socket", echo)])
"""


def test_check_warns_of_an_apps_websocket_outside_nginx_websocket_paths(tmp_path: Path) -> None:
    (tmp_path / "chat.py").write_text(CHAT)
    stack = make_stack(tmp_path / "run", APP_MODULE="chat:app", APP_SRC=str(tmp_path))
    result = stack.stackctl("check")
    assert result.returncode == 0, result.stdout + result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning.startswith(
        "warning: APP_MODULE=chat:app: its WebSocket route /chat/socket is not under "
        "NGINX_WEBSOCKET_PATHS=/ws/: nginx cuts it after NGINX_PROXY_READ_TIMEOUT=30s"
    )
    assert warning.endswith("Fix: add /chat/socket to NGINX_WEBSOCKET_PATHS")

    result = stack.stackctl("check", NGINX_WEBSOCKET_PATHS="/chat/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning:" not in result.stderr
    assert "NGINX_WS_READ_TIMEOUT=75 on every path of NGINX_WEBSOCKET_PATHS=/chat/" in result.stdout

    result = stack.stackctl("check", NGINX_WEBSOCKET_PATHS="/chat/ /healthz")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "stackctl check: NGINX_WEBSOCKET_PATHS='/chat/ /healthz': Value error, '/healthz' takes "
        "APP_LIVENESS_PATH=/healthz, which the platform answers over HTTP: move one of them"
    ]
