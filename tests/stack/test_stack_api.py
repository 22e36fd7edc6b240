"""deploy/stackctl/stack.py, the one way every tool drives a stack: start on free ports, reload, stop;
structured findings of the rules; what a running stack records about itself."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import psutil
import pytest

from deploy.stackctl import stack
from deploy.stackctl.ports import free_port_knobs, port_in_use
from loadtest.runner.report import write_stack_settings
from service.settings import ConfigError
from tests.support.stack import make_stack

pytestmark = pytest.mark.stack

QUIET = {"GUNICORN_LOG_LEVEL": "warning", "APP_LOG_LEVEL": "warning"}
RULE_1_BROKEN = {"NGINX_UPSTREAM_KEEPALIVE_TIMEOUT": "30", "GUNICORN_KEEPALIVE": "2"}


def test_start_reload_stop_on_free_ports(tmp_path: Path) -> None:
    knobs = {**free_port_knobs("local"), **QUIET, "WEB_CONCURRENCY": "1"}
    handle = stack.start("local", knobs, tmp_path / "run", base={})
    try:
        assert handle.url == f"http://127.0.0.1:{knobs['HTTP_PORT']}"
        assert httpx2.get(f"{handle.url}/healthz").json() == {"status": "ok"}
        assert handle.started_with()["WEB_CONCURRENCY"] == 1
        assert (
            set(handle.logs()) == {"redis", "gunicorn", "nginx", "nginx-error"}
            and handle.logs()["nginx"].is_file()
        )
        [worker] = handle.worker_pids()
        assert stack.recorded(handle.run_dir) is not None

        handle = handle.reload(APP_MAX_DELAY="45")
        assert httpx2.get(f"{handle.url}/api/info").json()["settings"]["app_max_delay"] == 45
        assert handle.worker_pids() != [worker], "a reload replaces the workers"
        recorded = stack.recorded(handle.run_dir)
        assert recorded is not None and recorded.settings()["APP_MAX_DELAY"] == 45
    finally:
        pids = list(handle.pids().values()) + handle.worker_pids()
        handle.stop()
    assert not port_in_use("127.0.0.1", int(knobs["HTTP_PORT"]))
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    assert stack.recorded(handle.run_dir) is None


def test_findings_name_the_rule_its_knobs_values_and_fix() -> None:
    found = stack.findings(RULE_1_BROKEN, base={})
    [broken] = [f for f in found if f.severity == "error"]
    assert broken.rule_id == 1
    assert dict(broken.values) == RULE_1_BROKEN
    assert "NGINX_UPSTREAM_KEEPALIVE_TIMEOUT" in broken.fix
    assert {f.rule_id for f in found if f.rule_id} == set(range(1, 8)), "every rule gives a verdict"


def test_a_broken_rule_is_refused_unless_the_caller_breaks_it_on_purpose(tmp_path: Path) -> None:
    knobs = {**free_port_knobs("local"), **QUIET, **RULE_1_BROKEN}
    with pytest.raises(ConfigError, match=r"refused: 1 ordering rule.*NGINX_UPSTREAM_KEEPALIVE_TIMEOUT=30"):
        stack.start("local", knobs, tmp_path / "refused", base={})
    assert not port_in_use("127.0.0.1", int(knobs["HTTP_PORT"]))
    with stack.running("local", knobs, tmp_path / "lab", base={}, enforce_rules=False) as handle:
        assert httpx2.get(f"{handle.url}/healthz").status_code == 200
    assert not port_in_use("127.0.0.1", int(knobs["HTTP_PORT"]))


def test_running_stops_the_stack_when_the_block_fails(tmp_path: Path) -> None:
    knobs = {**free_port_knobs("local"), **QUIET, "WEB_CONCURRENCY": "1"}
    with pytest.raises(RuntimeError), stack.running("local", knobs, tmp_path / "run", base={}):
        raise RuntimeError("the block failed")
    assert not port_in_use("127.0.0.1", int(knobs["HTTP_PORT"]))


def test_make_reload_keeps_start_values_and_says_what_changes(tmp_path: Path) -> None:
    started = make_stack(tmp_path / "run", WEB_CONCURRENCY="1", GUNICORN_KEEPALIVE="30")
    assert started.stackctl("up").returncode == 0
    try:
        plain = make_stack(tmp_path / "run", **{k: started.env[k] for k in free_port_knobs("local")})
        reloaded = plain.stackctl("reload", APP_MAX_DELAY="45")
        assert reloaded.returncode == 0, reloaded.stderr
        assert "APP_MAX_DELAY: 60.0 -> 45 (environment)" in reloaded.stdout
        assert "GUNICORN_KEEPALIVE=30" in reloaded.stdout and "WEB_CONCURRENCY=1" in reloaded.stdout
        info = httpx2.get(f"{started.url}/api/info").json()
        assert info["settings"]["gunicorn_keepalive"] == 30, "a plain reload dropped a start value"
        assert info["settings"]["app_max_delay"] == 45
    finally:
        started.down()


def test_a_report_records_the_settings_the_stack_was_started_with(tmp_path: Path) -> None:
    knobs = {**free_port_knobs("local"), **QUIET, "WEB_CONCURRENCY": "1", "NGINX_PROXY_READ_TIMEOUT": "29"}
    with stack.running("local", knobs, tmp_path / "run", base={}) as handle:
        info = httpx2.get(f"{handle.url}/api/info").json()
        assert "nginx_proxy_read_timeout" not in info["settings"], "the app process never gets NGINX_*"
        write_stack_settings(tmp_path, handle.url, info, handle.run_dir)
        started = json.loads((tmp_path / "stack-settings.json").read_text())
        assert started["settings"]["NGINX_PROXY_READ_TIMEOUT"] == 29
        assert started["settings"]["HTTP_PORT"] == int(knobs["HTTP_PORT"])

        elsewhere = tmp_path / "other"
        elsewhere.mkdir()
        write_stack_settings(elsewhere, handle.url, info, tmp_path / "not-its-run-dir")
        reported = json.loads((elsewhere / "stack-settings.json").read_text())
        assert "only the layers the app process receives" in reported["source"]
        assert "NGINX_PROXY_READ_TIMEOUT" not in reported["settings"]
        assert reported["settings"]["WEB_CONCURRENCY"] == 1
