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
