"""Every row of the timeout lab, observed on real stacks: who gave up first and what the client saw."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from loadtest import timeout_lab
from loadtest.timeout_lab import Row

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Row]:
    observed = timeout_lab.run_lab(timeout_lab.EXPERIMENTS, tmp_path_factory.mktemp("timeout-lab"))
    return {row.experiment: row for row in observed}


def test_every_experiment_produces_a_row(rows: dict[str, Row]) -> None:
    assert list(rows) == [experiment.name for experiment in timeout_lab.EXPERIMENTS]


def test_app_gives_up_first_with_its_own_json_504(rows: dict[str, Row]) -> None:
    row = rows["app-timeout"]
    assert (row.status, row.layer, row.gave_up_first) == (504, "app", "app")
    assert row.facts["body"]["error"] == "request_timeout"
    assert 0.9 <= row.seconds < 2.5, "APP_REQUEST_TIMEOUT=1 should answer after about 1 s"
    assert row.check == "passes"


def test_nginx_read_timeout_below_the_apps_gives_nginxs_json_504(rows: dict[str, Row]) -> None:
    row = rows["nginx-read-timeout"]
    assert (row.status, row.layer, row.gave_up_first) == (504, "nginx", "nginx")
    assert row.facts["body"]["error"] == "gateway_timeout"
    assert 0.9 <= row.seconds < 2.5, "NGINX_PROXY_READ_TIMEOUT=1 should answer before APP_REQUEST_TIMEOUT=3"
    assert "rule 3" in row.check


def test_blocked_worker_is_killed_its_requests_get_502_and_it_respawns(rows: dict[str, Row]) -> None:
    row = rows["worker-timeout"]
    facts = row.facts
    assert facts["statuses"] == [502, 502, 502], "every request in flight on the killed worker fails"
    assert facts["layers"] == ["nginx", "nginx", "nginx"]
    assert f"WORKER TIMEOUT (pid:{facts['old_pid']})" in facts["worker_timeout_log_line"]
    assert facts["new_pid"] is not None and facts["new_pid"] != facts["old_pid"]
    assert not psutil.pid_exists(facts["old_pid"]) or psutil.Process(facts["old_pid"]).status() == "zombie"
    assert row.seconds < 6, "the worker must be killed before /api/blocking would have finished"
    assert "rule 5" in row.check


def test_uvicorn_limit_concurrency_refuses_at_once_with_json_503(rows: dict[str, Row]) -> None:
    row = rows["uvicorn-limit-concurrency"]
    assert (row.status, row.layer) == (503, "uvicorn")
    assert row.facts["refused_layers"] == ["uvicorn"]
    facts = row.facts
    assert facts["refused_max_seconds"] < facts["served_min_seconds"], "uvicorn refuses at once, never queues"
    assert facts["served_min_seconds"] >= 1.5, "requests within the limit are served after their delay"
    assert "rule 7" in row.check


def test_nginx_rate_limit_answers_json_429(rows: dict[str, Row]) -> None:
    row = rows["nginx-rate-limit"]
    assert (row.status, row.layer) == (429, "nginx")
    statuses = row.facts["statuses"]
    assert statuses[0] == 200 and statuses[-1] == 429


def test_nginx_connection_limit_answers_json_503(rows: dict[str, Row]) -> None:
    row = rows["nginx-connection-limit"]
    assert (row.status, row.layer) == (503, "nginx")
    assert row.facts["body"]["error"] == "service_unavailable"
    assert row.facts["holder_status"] == 200


def test_client_giving_up_first_is_logged_as_499_by_nginx(rows: dict[str, Row]) -> None:
    row = rows["client-gives-up"]
    assert row.status is None and row.gave_up_first == "client"
    assert row.facts["nginx_log_status"] == 499
    assert row.seconds < 2, "LOCUST_CLIENT_TIMEOUT=1 is the shortest timeout"
    assert "rule 3" in row.check


def test_markdown_table_shows_every_row(rows: dict[str, Row]) -> None:
    text = timeout_lab.markdown(list(rows.values()))
    assert len(text.splitlines()) == 2 + len(rows)
    assert "| worker-timeout | nginx | JSON 502 bad_gateway | 502 | nginx |" in text


def test_experiments_with_the_same_knobs_share_one_stack() -> None:
    first, second = timeout_lab.EXPERIMENTS[:2]
    twin = timeout_lab.Experiment("twin", dict(first.knobs), first.rule, first.probe)
    assert [[e.name for e in g] for g in timeout_lab.groups([first, second, twin])] == [
        [first.name, "twin"],
        [second.name],
    ]


def test_lab_run_dirs_keep_each_stacks_logs(tmp_path: Path) -> None:
    row = timeout_lab.run_experiment("app-timeout", run_root=tmp_path)
    assert row.status == 504
    assert (tmp_path / "app-timeout" / "nginx.log").read_text().count(row.facts["request_id"]) >= 1
