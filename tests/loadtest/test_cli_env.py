"""`make drill DRILL_SECONDS=30` and the like: make exports the variables of its command line to the recipe,
a plain `python -m loadtest.drill`, whose options read them (deploy/stackctl/envargs.py). Each tool's
options with a given environment; then the real make targets with a bad value, which the tool refuses in
one line before anything starts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.stackctl.config import ROOT
from loadtest import drill, runner
from loadtest.bench import cli as bench_cli
from loadtest.bench.rows import SHORT as BENCH_SHORT
from loadtest.drill import cli as drill_cli
from loadtest.drill.plan import SHORT, LoadParams
from loadtest.sweep import cli as sweep_cli
from loadtest.sweep.report import Bounds
from service.settings import ToolInputs


def drill_params(environ: dict[str, str]) -> tuple[list[str], LoadParams]:
    names, _, params = drill_cli.inputs(drill_cli.parser(environ).parse_args([]))
    return names, params


def drill_servers(environ: dict[str, str]) -> list[str]:
    return drill_cli.inputs(drill_cli.parser(environ).parse_args([]))[1]


def test_drill_reads_its_variables() -> None:
    environ = {
        "DRILL": "reload,worker-kill",
        "DRILL_SECONDS": "30",
        "WRK_THREADS": "2",
        "WRK_CONNECTIONS": "64",
        "DRILL_WEBSOCKETS": "0",
        "DRILL_RATE": "1500",
        "DRILL_SHORT": "1",
        "DRILL_STRICT": "1",
        "DRILL_POST": "/message",
        "DRILL_BODY": '{"author": "drill", "text": "hi"}',
        "DRILL_GET": "/",
        "DRILL_WS": "/ws",
    }
    expected = LoadParams(
        seconds=30.0,
        threads=2,
        connections=64,
        websockets=0,
        room_members=drill.SHORT.room_members,  # short mode's own: DRILL_ROOM_MEMBERS is not set
        rate=1500.0,
        short=True,
        strict=True,
        post="/message",
        body=environ["DRILL_BODY"],
        get="/",
        ws_path="/ws",
    )
    assert drill_params(environ) == (["reload", "worker-kill"], expected)
    assert drill_params({"DRILL_SHORT": "1"}) == (list(drill.NAMES), SHORT), "short mode keeps its defaults"
    assert drill_params({})[1] == LoadParams() and LoadParams().seconds == ToolInputs().drill_seconds
    assert LoadParams().ws_path == "/ws/echo" and LoadParams().post == "/api/echo", "the demo's routes"
    # empty is a value for these two (make exports NAME= as ""): POSTs only, no WebSockets
    none = drill_params({"DRILL_GET": "", "DRILL_WS": ""})[1]
    assert (none.get, none.ws_path, none.sockets) == ("", "", 0)
    assert drill_params({"DRILL_POST": ""})[1].post == "/api/echo", "an empty DRILL_POST is unset"
    assert drill_servers({}) == ["blueprint"] and drill_servers({"SERVER": "granian,uvicorn"}) == [
        "granian",
        "uvicorn",
    ]
    assert drill_servers({"SERVER": "all"})[0] == "blueprint" and len(drill_servers({"SERVER": "all"})) == 5


def test_bench_reads_its_variables() -> None:
    environ = {
        "BENCH": "bare,ws-held",
        "BENCH_SECONDS": "3",
        "BENCH_CONNECTIONS": "8",
        "BENCH_SLOW_N": "10",
        "BENCH_SLOW_DELAY": "0.5",
        "BENCH_WS_N": "20",
        "BENCH_WS_HOLD": "1",
        "BENCH_SHORT": "1",
        "BENCH_PATH": "/",
    }
    specs, params = bench_cli.inputs(bench_cli.parser(environ).parse_args([]))
    assert [spec.name for spec in specs] == ["bare", "ws-held"]
    chosen = {"seconds": 3.0, "connections": 8, "slow_n": 10, "slow_delay": 0.5, "ws_n": 20, "ws_hold": 1.0}
    assert params == replace(BENCH_SHORT, **chosen, path="/"), "short presets for the rest"


def test_sweep_reads_its_variables_with_a_sweeps_own_defaults() -> None:
    environ = {
        "SWEEP": "WEB_CONCURRENCY=1,2",
        "SCENARIO": "slow",
        "USERS": "5",
        "SPAWN_RATE": "2",
        "RUN_TIME": "5s",
        "LOCUST_WORKERS": "1",
        "SWEEP_MAX_P95_MS": "300",
        "SWEEP_MAX_FAIL_RATIO": "0.05",
    }
    args = sweep_cli.parser(environ).parse_args([])
    assert (args.sweep, args.scenario, args.users, args.spawn_rate, args.run_time, args.workers) == (
        "WEB_CONCURRENCY=1,2",
        "slow",
        5,
        2.0,
        "5s",
        1,
    )
    assert Bounds(args.max_fail_ratio, args.max_p95_ms) == Bounds(0.05, 300.0)
    unset = sweep_cli.parser({}).parse_args([])
    assert (unset.scenario, unset.spawn_rate, unset.run_time) == ("http", 0.0, "15s"), "not make loadtest's"
    assert Bounds(unset.max_fail_ratio, unset.max_p95_ms) == Bounds()


def test_the_loadtest_runner_reads_its_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCENARIO", "slow")
    with pytest.raises(SystemExit) as done:
        runner.main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[env SCENARIO, default mixed]" in text and "[env USERS, default 20]" in text
    monkeypatch.setenv("USERS", "many")
    with pytest.raises(SystemExit) as done:
        runner.main([])
    assert done.value.code == 2 and "USERS='many': not a whole number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "variable", "message"),
    [
        ("drill", "DRILL_SECONDS=abc", "make drill: DRILL_SECONDS='abc': not a number"),
        ("bench", "BENCH_WS_N=0", "make bench: BENCH_WS_N='0': must be at least 1"),
        ("sweep", "SWEEP_MAX_FAIL_RATIO=2", "make sweep: SWEEP_MAX_FAIL_RATIO='2': must be at most 1"),
        ("loadtest", "USERS=abc", "USERS='abc': not a whole number"),
        ("timeout-lab", "LAB_FORMAT=xml", "LAB_FORMAT='xml': one of table, markdown, json"),
    ],
)
def test_a_make_variable_reaches_the_tools_plain_command_line(
    target: str, variable: str, message: str
) -> None:
    venv = Path(sys.prefix)
    # -o: never (re)install into the virtualenv the tests run from
    make = ["make", "--no-print-directory", "-o", f"{venv}/.installed", f"VENV={venv}", target, variable]
    recipe = subprocess.run([*make, "-n"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    name, value = variable.split("=")
    assert name not in recipe and value not in shlex.split(recipe), f"the recipe passes nothing on: {recipe}"
    result = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_make_drill_passes_app_module_on_to_its_stacks() -> None:
    # `make drill APP_MODULE=... APP_SRC=...`: the stack knobs reach the drills like any tool's inputs, so a
    # drill that needs a demo route is skipped for that app, before any stack starts.
    venv = Path(sys.prefix)
    make = ["make", "--no-print-directory", "-o", f"{venv}/.installed", f"VENV={venv}", "drill"]
    knobs = ["APP_MODULE=main:app", "APP_SRC=examples/chat", "DRILL=worker-timeout"]
    result = subprocess.run([*make, *knobs], cwd=ROOT, capture_output=True, text=True, timeout=120)
    written = re.search(r"^report: (\S+)/index\.html", result.stdout, re.MULTILINE)
    if written:
        shutil.rmtree(written.group(1))  # make drill writes under reports/; nothing ran
    assert result.returncode == 0, result.stderr
    assert "worker-timeout: skipped: needs the demo's /api/blocking: APP_MODULE=main:app" in result.stderr
