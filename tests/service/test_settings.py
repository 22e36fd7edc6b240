import re

import pytest

from service.settings import ConfigError, load_settings, usable_cpus


def test_bad_value_names_the_variable_the_value_and_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUNICORN_KEEPALIVE", "soon")
    with pytest.raises(ConfigError, match=r"GUNICORN_KEEPALIVE='soon': Input should be a valid integer"):
        load_settings()


def test_out_of_range_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PORT", "70000")
    with pytest.raises(ConfigError, match=r"HTTP_PORT='70000': Input should be less than or equal to 65535"):
        load_settings()


def test_stack_env_file_wins_over_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    env_file = tmp_path / "stack.env"  # type: ignore[operator]
    env_file.write_text("APP_MAX_DELAY=7\n")
    monkeypatch.setenv("APP_MAX_DELAY", "3")
    monkeypatch.setenv("STACK_ENV_FILE", str(env_file))
    assert load_settings().app_max_delay == 7


def test_workers_default_to_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert load_settings().workers == usable_cpus() >= 1
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert load_settings().workers == 3


@pytest.mark.parametrize(
    ("bind", "rule"),
    [
        (
            "unix:run/app.sock",
            r"a unix socket path must be absolute \(unix:/dir/app.sock\), got 'run/app\.sock'",
        ),
        ("unix:", r"a unix socket path must be absolute"),
        ("unix:/run/app/", r"a unix socket path must name a file, not a directory, got '/run/app/'"),
        (
            f"unix:/{'a' * 107}",
            r"a unix socket path may have at most 107 bytes \(the kernel's sun_path\), '/a+' has 108",
        ),
        ("app.sock", r"expected host:port or unix:/absolute/path, got 'app.sock'"),
    ],
)
def test_bad_unix_socket_bind_names_the_variable_the_value_and_the_rule(
    bind: str, rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUNICORN_BIND", bind)
    with pytest.raises(ConfigError, match=rf"^GUNICORN_BIND='{re.escape(bind)}': Value error, {rule}"):
        load_settings()


def test_a_unix_socket_bind_is_nginx_upstream_whatever_nginx_upstream_says() -> None:
    longest = f"/{'a' * 106}"  # 107 bytes: the most sun_path takes
    assert load_settings(gunicorn_bind=f"unix:{longest}").upstream == f"unix:{longest}"
    settings = load_settings(gunicorn_bind="unix:/run/app.sock", nginx_upstream="127.0.0.1:9000")
    assert settings.upstream == "unix:/run/app.sock"
    assert load_settings(nginx_upstream="127.0.0.1:9000").upstream == "127.0.0.1:9000"
    with pytest.raises(ConfigError, match=r"^NGINX_UPSTREAM='unix:app.sock': Value error, a unix socket"):
        load_settings(nginx_upstream="unix:app.sock")


@pytest.mark.parametrize(
    ("paths", "rule"),
    [
        ("/", r"'/' would take every request, the HTTP routes too"),
        ("chat/", r"'chat/' is no path: each entry starts with / and has letters, digits"),
        ('/chat/"x"', r"""'/chat/"x"' is no path"""),
        ("/chat/{room}", r"'/chat/\{room\}' is no path"),
        ("/chat/;", r"'/chat/;' is no path"),
        ("/a//b", r"'/a//b' never matches: nginx merges //"),
        ("/a/../b/", r"'/a/../b/' never matches"),
        ("/_edge/404", r"'/_edge/404' is under nginx's own /_edge/"),
        ("/_nginx/", r"'/_nginx/' is under nginx's own /_nginx/"),
        ("/api/", r"'/api/' is nginx's rate-limited HTTP location"),
        ("/ws/ /ws/", r"'/ws/' is listed twice"),
        ("/chat/ /chat", r"'/chat' and '/chat/' overlap"),
        ("/ws/ /ws/chat/", r"'/ws/chat/' and '/ws/' overlap"),
        ("/healthz/", r"'/healthz/' takes APP_LIVENESS_PATH=/healthz, which the platform answers over HTTP"),
        ("/ws/ /readyz", r"'/readyz' takes APP_READINESS_PATH=/readyz"),
        ("/metrics", r"'/metrics' takes APP_METRICS_PATH=/metrics"),
    ],
)
def test_bad_websocket_paths_name_the_variable_the_value_and_the_rule(
    paths: str, rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NGINX_WEBSOCKET_PATHS", paths)
    said = rf"^NGINX_WEBSOCKET_PATHS='{re.escape(paths)}': Value error, {rule}"
    with pytest.raises(ConfigError, match=said):
        load_settings()


def test_websocket_paths_must_leave_a_moved_platform_path_alone() -> None:
    with pytest.raises(ConfigError, match=r"'/ws/' takes APP_READINESS_PATH=/ws/ready"):
        load_settings(app_readiness_path="/ws/ready")
    assert load_settings(app_readiness_path="/ws/ready", nginx_websocket_paths="/ws/echo").app_readiness_path


def test_websocket_paths_default_to_the_demos_and_may_be_several_or_none() -> None:
    assert load_settings().nginx_websocket_paths == "/ws/"
    several = load_settings(nginx_websocket_paths=" /ws/  /chat/socket\t/api/v1/stream/ ")
    assert several.nginx_websocket_paths == "/ws/ /chat/socket /api/v1/stream/"
    assert load_settings(nginx_websocket_paths="").nginx_websocket_paths == ""
