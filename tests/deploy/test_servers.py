"""deploy/stackctl/servers.py: every server says how it carries out each event or that it has none; the
others' flags come from the knobs that mean the same; containers take only the servers that run
deploy/gunicorn.conf.py; the local runtime swaps the app component and nothing else. (Each server really
runs in tests/loadtest/test_drill.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.stackctl import runtimes, servers
from deploy.stackctl.components import APP, COMPONENTS, Launch
from deploy.stackctl.config import effective
from deploy.stackctl.errors import StackError
from deploy.stackctl.local import Local
from deploy.stackctl.rundir import RunDir
from service.platform import PLATFORM_APP


def launch(tmp_path: Path, **knobs: str) -> Launch:
    environ = {"WEB_CONCURRENCY": "3", "UVICORN_LIMIT_CONCURRENCY": "0", **knobs}
    return Launch(RunDir(tmp_path), effective(environ, None), environ, "http://127.0.0.1:1", True)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_server_has_a_mechanism_for_every_event_or_says_it_has_none() -> None:
    assert servers.DEFAULT == "blueprint" and servers.NAMES[0] == servers.DEFAULT
    for server in servers.SERVERS.values():
        assert set(server.events) == set(servers.EVENTS), server.name
        for event, mechanism in server.events.items():
            assert mechanism.how, f"{server.name} {event}"
            assert mechanism.exists != mechanism.how.startswith("no such event: "), f"{server.name} {event}"
    assert all(m.exists for m in servers.get(servers.DEFAULT).events.values()), "the blueprint has every one"
    lacking = {(s.name, e) for s in servers.SERVERS.values() for e, m in s.events.items() if not m.exists}
    assert lacking == {("uvicorn", "worker-timeout"), ("granian", "worker-timeout")}


def test_an_unknown_server_is_refused_naming_the_choices() -> None:
    with pytest.raises(StackError, match="SERVER='uvicron': choose one of blueprint, uvicorn-worker"):
        servers.get("uvicron")


def test_uvicorn_gets_its_flags_from_the_knobs_and_none_of_them_as_a_variable(tmp_path: Path) -> None:
    knobs = {"GUNICORN_KEEPALIVE": "33", "GUNICORN_MAX_REQUESTS": "500", "GUNICORN_MAX_REQUESTS_JITTER": "50"}
    at = launch(tmp_path, GUNICORN_BIND="127.0.0.1:9123", **knobs)
    command = servers.get("uvicorn").command(at)
    assert command[1:4] == ["-m", "uvicorn", PLATFORM_APP], "the app inside the platform, as ours runs it"
    assert (flag(command, "--host"), flag(command, "--port"), flag(command, "--workers")) == (
        "127.0.0.1",
        "9123",
        "3",
    )
    assert flag(command, "--timeout-keep-alive") == "33", "rule 1 holds for uvicorn too"
    assert flag(command, "--limit-max-requests") == "500"
    assert flag(command, "--limit-max-requests-jitter") == "50"
    assert "--limit-concurrency" not in command, "0 = no limit: no flag"
    env = servers.get("uvicorn").env(at)
    assert env is not None and not any(name.startswith("UVICORN_") for name in env)
    assert env["STACK_ENV_FILE"] == str(RunDir(tmp_path).env_file)

    socket = servers.get("uvicorn").command(launch(tmp_path, GUNICORN_BIND="unix:/tmp/app.sock"))
    assert flag(socket, "--uds") == "/tmp/app.sock" and "--port" not in socket
    no_limit = servers.get("uvicorn").command(launch(tmp_path, GUNICORN_MAX_REQUESTS="0"))
    assert "--limit-max-requests" not in no_limit, "0 = never recycle, as for gunicorn"


def test_granian_respawns_failed_workers_and_kills_after_the_graceful_timeout(tmp_path: Path) -> None:
    command = servers.get("granian").command(launch(tmp_path, GUNICORN_GRACEFUL_TIMEOUT="7"))
    assert "--respawn-failed-workers" in command, "without it one dead worker stops granian"
    assert flag(command, "--workers-kill-timeout") == "7" and flag(command, "--interface") == "asgi"
    assert servers.get("granian").mechanism("recycle").environ == servers.GRANIAN_RECYCLE_ENV


def test_the_gunicorn_servers_differ_only_by_worker_class_and_run_in_containers_too() -> None:
    gunicorn = [s for s in servers.SERVERS.values() if s.runs_gunicorn_conf]
    assert [s.name for s in gunicorn] == ["blueprint", "uvicorn-worker", "gunicorn-asgi"]
    assert {s.command for s in gunicorn} == {APP.command}
    assert servers.get("uvicorn-worker").knobs == {"GUNICORN_WORKER_CLASS": servers.STOCK_WORKER_CLASS}
    assert servers.get("blueprint").knobs == {}, "the blueprint runs GUNICORN_WORKER_CLASS's default"
    for name in ("docker", "swarm"):
        runtime = runtimes.RUNTIMES[name]
        assert all(runtime.serving(server) is runtime for server in gunicorn)
        with pytest.raises(StackError, match="SERVER=granian: granian runs on the local runtime only"):
            runtime.serving(servers.get("granian"))


def test_the_local_runtime_swaps_the_app_component_and_keeps_the_others() -> None:
    local = Local()
    assert local.serving(servers.get(servers.DEFAULT)) is local
    uvicorn = local.serving(servers.get("uvicorn"))
    assert uvicorn.server.name == "uvicorn"
    assert [c.name for c in uvicorn.components] == ["uvicorn" if c is APP else c.name for c in COMPONENTS]
    assert uvicorn.app.service == APP.service and uvicorn.app.title == "uvicorn supervisor"
    assert [c for c in uvicorn.components if c is not uvicorn.app] == [c for c in COMPONENTS if c is not APP]
    assert uvicorn.port_knobs() == local.port_knobs()
