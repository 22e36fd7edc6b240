"""`make drill`: bad input is refused in one line before anything starts; one short real run of the drills
for every server (SERVER=all) writes rows whose counts agree with each other, each through its server's
mechanism or "no such event", the blueprint's losing nothing and its worker-timeout timeline showing the
killed worker and its replacement; a lossy drill held to zero (DRILL_STRICT=1) makes the exit code non-zero.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from deploy.stackctl import servers, stack
from deploy.stackctl.config import ROOT
from loadtest import drill
from loadtest.drill import capabilities
from loadtest.limits import THRESHOLD_EXIT_CODE
from loadtest.sampler.sampler import SERIES_FILE, read_series
from tests.support.browser import open_page

SOCKET_KINDS = {"connect", "read", "write", "timeout"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--drill", "nope"], "DRILL='nope': no such drill; choose from baseline, reload"),
        (["--drill", "worker-kil"], "did you mean worker-kill?"),
        (["--drill", "reload", "--seconds", "abc"], "DRILL_SECONDS='abc': not a number"),
        (["--connections", "1.5"], "WRK_CONNECTIONS='1.5': not a whole number"),
        (["--websockets", "-1"], "DRILL_WEBSOCKETS='-1': must be at least 0"),
        (["--rate", "nan"], "DRILL_RATE='nan': must be at least 0"),
        (["--threads", "4", "--connections", "2"], "WRK_CONNECTIONS=2 < WRK_THREADS=4"),
        (["--post", "message"], "DRILL_POST='message': a path starting with /, e.g. /api/echo"),
        (["--post", ""], "DRILL_POST='': a path starting with / (required)"),
        (["--ws-path", "ws"], "DRILL_WS='ws': a path starting with /, e.g. /ws/echo"),
        (["--body", "{text: 1}"], "DRILL_BODY='{text: 1}': not JSON (Expecting property name"),
        (["--server", "uvicron"], "SERVER='uvicron': no such server; did you mean uvicorn?"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_starts_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = drill.main([*argv, "--out-root", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert captured.out == ""
    assert not list(tmp_path.iterdir()), "nothing may run or be written for bad input"


def base_env() -> dict[str, str]:
    return {**stack.isolated_base(), "RUNTIME": "local", "PROFILE": "default"}


def report(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    (report_dir,) = tmp_path.glob("drill-*")
    return report_dir, json.loads((report_dir / "drill.json").read_text())


def assert_consistent(
    row: dict[str, Any],
    websockets: int,
    room_members: int = drill.SHORT.room_members,
    recovery: bool = True,
    reconnected: bool = True,
) -> None:
    """`reconnected`: every close was followed by a connect (a server that closes a socket as the load
    ends, or accepts none for a while, can leave a client still connecting then)."""
    name = row["drill"]
    assert row["status"] in ("passed", "failed"), row["reason"]
    assert row["requests"] >= row["responses"] > 0
    assert row["rate"] > 0 and row["seconds"] >= 4
    assert set(row["by_method"]) == {"GET", "POST"}, f"{name}: both methods are counted apart"
    assert sum(n for statuses in row["by_method"].values() for n in statuses.values()) == row["responses"]
    for kind, count in row["failures"].items():
        assert count > 0
        if kind not in SOCKET_KINDS:
            method, status = kind.split()
            assert not status.startswith("2") and row["by_method"][method][status] == count
    assert row["requests"] == row["responses"] + row["failures"].get("read", 0)
    counted = sum(n for kind, n in row["failures"].items() if kind not in row["not_counted"])
    assert row["lost"] == counted + row["probe_failures"]
    rooms = row["rooms"]
    rooms_lost = rooms.get("missing", 0) + len(rooms.get("fatal", []))
    passed = (
        row["lost"] <= row["allowed"]
        and row["ws_failed_reconnects"] == 0
        and row["ws_wrong_echoes"] == 0
        and rooms_lost <= row["rooms_allowed"]
    )
    assert row["status"] == ("passed" if passed else "failed")
    assert row["ws_clients"] == websockets and row["ws_connects"] >= websockets
    assert row["ws_failed_reconnects"] == sum(row["ws_failed_by_reason"].values())
    closes = sum(row["ws_closes"].values())
    assert websockets + closes >= row["ws_connects"], "a connect follows a close (or the first one)"
    assert not reconnected or row["ws_connects"] == websockets + closes, "every close is reconnected"
    slowest = row["ws_slowest_connects_s"]
    assert 0 < len(slowest) <= 5 and slowest == sorted(slowest, reverse=True), "the slowest handshakes, first"
    assert not recovery or (row["recovery_s"] is not None and row["recovery_s"] > 0)
    assert row["load_average_before"] and row["load_average_after"]
    if not room_members:
        assert rooms == {} and row["rooms_allowed"] == 0, "no room members, no room counts"
        return
    assert rooms["members"] == room_members and rooms["published"] > 0, rooms
    assert rooms["missing"] == sum(rooms["missing_by_member"].values()), rooms
    assert rooms["latency_p50_ms"] <= rooms["latency_p99_ms"]


def assert_rooms_kept(row: dict[str, Any]) -> None:
    """What the blueprint promises its room members: nothing missed beyond the allowance, none gave up."""
    rooms = row["rooms"]
    assert rooms["delivered"] >= rooms["published"], "each message reaches the members of its room"
    assert rooms["missing"] <= row["rooms_allowed"], rooms
    assert rooms["fatal"] == [] and rooms["out_of_order"] == 0, rooms
    # Publishes in flight on a killed worker get nginx's 502 or no acknowledgement: within its allowance
    # (the app's own 503 while Redis is down is an answer, counted apart).
    unanswered = rooms["unacknowledged"] + rooms["refused"].get("502 bad_gateway", 0)
    assert unanswered <= row["allowed"], rooms


# One short run of the drills on every server, each drill on a fresh stack (~10 s each on 2 cores: 13
# stacks). worker-term is left out to keep it short: its mechanism is the one worker-timeout's respawn and
# recycle's drain use, and the blueprint's worker-term is held to nothing on the chat example below.
SERVER_DRILLS = ("reload", "recycle", "worker-timeout")


@pytest.mark.loadtest
def test_every_server_runs_each_drill_through_its_own_mechanism_and_the_blueprint_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--drill", ",".join(SERVER_DRILLS), "--server", "all", "--short", "--out-root", str(tmp_path)]
    code = drill.main(argv, base=base_env())
    out = capsys.readouterr().out
    report_dir, data = report(tmp_path)
    rows = {(row["server"], row["drill"]): row for row in data["rows"]}
    websockets = drill.SHORT.websockets
    available = [name for name in servers.NAMES if not servers.SERVERS[name].missing()]

    assert list(rows) == [(server, name) for server in servers.NAMES for name in SERVER_DRILLS]
    for (server, name), row in rows.items():
        mechanism = drill.BY_NAME[name].mechanism(servers.SERVERS[server])
        assert row["mechanism"] == mechanism.how and row["mechanism"], "every row says its mechanism"
        if not mechanism.exists:
            assert row["status"] == "no such event" and row["requests"] == 0, f"{server} {name} ran"
            assert row["reason"] and row["reason"] in mechanism.how
            continue
        if server not in available:
            assert row["status"] == "skipped" and row["reason"] == servers.SERVERS[server].missing()
            continue
        # A close in the last moment of a 4 s drill (WebSockets are closed over seconds) may still be
        # reconnecting when the load ends.
        assert_consistent(row, websockets, recovery=name != "recycle", reconnected=False)
        assert not (report_dir / server / name / "state.json").exists(), "stack left up"
        assert (report_dir / server / name / f"{servers.SERVERS[server].process}.log.gz").is_file()
    no_event = {key for key, row in rows.items() if row["status"] == "no such event"}
    assert no_event == {("uvicorn", "worker-timeout"), ("granian", "worker-timeout")}, "no heartbeat there"

    blueprint = {name: row for (server, name), row in rows.items() if server == servers.DEFAULT}
    for row in blueprint.values():
        assert row["status"] == "passed", (row["drill"], row["failures"], row["ws_failed_by_reason"])
        assert_rooms_kept(row)
    assert all(row["lost"] == 0 for row in blueprint.values() if row["allowance"] == "nothing")
    reload = blueprint["reload"]
    assert reload["allowed"] == 0 and reload["allowance"] == "nothing"
    assert reload["ws_closes"].get("1012", 0) >= websockets, "a reload closes every WebSocket with 1012"
    members = drill.SHORT.room_members
    assert reload["rooms"]["closes"].get("1012", 0) >= members, "every room member resumed on a new worker"
    assert reload["rooms_allowed"] == 0, "no room member may miss a message"
    timeout = blueprint["worker-timeout"]
    assert timeout["allowed"] > 0 and "killed by gunicorn" in timeout["recovery"]
    assert_timeline_shows_the_killed_worker(report_dir, servers.DEFAULT)

    failed = any(row["status"] == "failed" for row in data["rows"])
    assert code == (THRESHOLD_EXIT_CODE if failed else 0)
    assert data["passed"] is not failed
    assert data["cores"] and data["cpu"] and data["load_average_at_start"] and data["load_average_at_end"]
    assert "wrk -t1 -c32" in data["load"]
    page = (report_dir / "index.html").read_text()
    assert page.count("<tr class=") == len(rows) and "cores: " in page and "wrk -t1 -c32" in page
    assert page.count('<tr class="no-such-event">') == len(no_event)
    side = (report_dir / "servers.md").read_text()
    assert "| drill | " + " | ".join(servers.NAMES) + " |" in side
    assert all(f"| {name} | " in side for name in SERVER_DRILLS)
    assert "| worker-timeout | granian | no such event: " in side, "the mechanisms, below the table"
    assert "load average" in side and str(report_dir / "index.html") in out


def assert_timeline_shows_the_killed_worker(report_dir: Path, server: str) -> None:
    """The worker-timeout drill's timeline: the killed worker, its stall before, and its replacement."""
    samples = read_series(report_dir / server / "worker-timeout" / SERIES_FILE)
    ended = [(s["t"], e) for s in samples for e in s["ended"]]
    started = [(s["t"], w) for s in samples for w in s["started"]]
    timed_out = [(t, e) for t, e in ended if e["reason"] == "timeout"]
    assert timed_out, f"no worker ended with `timeout`: {ended}"
    killed_at, killed = timed_out[0]
    assert any(t >= killed_at for t, _ in started), f"no worker started after {killed['id']}: {started}"
    before = [w for s in samples if s["t"] < killed_at for w in s["workers"] if w["id"] == killed["id"]]
    assert any(w["stalled"] for w in before), "the blocked worker shows its stall before it is killed"

    dom, console = open_page((report_dir / "index.html").as_uri())
    assert console == [], console
    drawn = re.search(rf'id="charts-{server}-worker-timeout" data-drawn="(\d+)"', dom)
    assert drawn is not None and int(drawn.group(1)) >= 3, dom[-3000:]
    assert "stack-marker-end" in dom and "stack-marker-start" in dom and "stack-marker-event" in dom
    assert f"worker {killed['id']} ended: timeout" in dom


@pytest.mark.loadtest
def test_a_redis_restart_loses_only_what_the_member_away_across_it_had_not_received(tmp_path: Path) -> None:
    code = drill.main(["--drill", "redis-restart", "--short", "--out-root", str(tmp_path)], base=base_env())
    report_dir, data = report(tmp_path)
    (row,) = data["rows"]
    assert_consistent(row, drill.SHORT.websockets)
    assert_rooms_kept(row)
    rooms = row["rooms"]
    assert rooms["closes"].get("1011", 0) >= drill.SHORT.room_members - 1, "members present: closed with 1011"
    assert rooms["refused"].get("503 backplane_unavailable", 0) > 0, "publishing while Redis is down: 503"
    assert row["failures"] == {}, "HTTP kept serving"
    # Redis comes back empty: the member away across the restart misses what it had not received, and
    # the row says how many; the members present at most what the dying Redis had not handed on.
    assert "without persistence" in " ".join(row["notes"]) and " 0 of all the drill rooms'" in row["notes"][0]
    away = rooms["missing_by_member"].get("m0.0", 0)
    assert away > 0 and row["rooms_allowance"].startswith(f"{away} + <= "), row["rooms_allowance"]
    assert rooms["missing"] <= row["rooms_allowed"]
    assert code == 0 and row["status"] == "passed", row
    assert not (report_dir / row["server"] / row["drill"] / "state.json").exists(), "stack left up"


@pytest.mark.loadtest
def test_a_lossy_drill_held_to_zero_exits_non_zero(tmp_path: Path) -> None:
    argv = ["--drill", "worker-kill", "--short", "--strict", "--out-root", str(tmp_path)]
    code = drill.main(argv, base=base_env())
    _, data = report(tmp_path)
    (row,) = data["rows"]
    assert row["allowed"] == 0 and row["allowance"].startswith("nothing (DRILL_STRICT=1; else <= ")
    assert row["lost"] > 0, "SIGKILL under load takes the killed worker's in-flight requests with it"
    assert row["status"] == "failed" and data["passed"] is False
    assert code == THRESHOLD_EXIT_CODE
    assert_consistent(row, drill.SHORT.websockets)
    assert "in flight on worker" in row["allowance"] and row["rooms_allowed"] == 0
    assert set(row["ws_closes"]) <= {"1006"}, "a killed worker sends no close frame"
    assert "1 gunicorn worker(s) started during the drill" in row["notes"]


CHAT = ROOT / "examples" / "chat"
CHAT_LOAD = [
    "--post",
    "/message",
    "--body",
    '{"author": "drill", "text": "hello"}',
    "--get",
    "/",
    "--ws-path",
    "/ws",
]


@pytest.mark.loadtest
def test_a_short_run_on_the_chat_example_loses_nothing_and_skips_the_demo_drills(tmp_path: Path) -> None:
    # The stacks serve examples/chat (APP_MODULE, APP_SRC, as `make drill APP_MODULE=...` passes them on);
    # the load sends its routes: POST /message (201), GET /, and WebSockets on its echo at /ws.
    base = {**base_env(), "APP_MODULE": "main:app", "APP_SRC": str(CHAT)}
    drills = "reload,worker-term,worker-timeout,down-in-flight"
    argv = ["--drill", drills, "--short", *CHAT_LOAD, "--out-root", str(tmp_path)]
    code = drill.main(argv, base=base)
    _, data = report(tmp_path)
    reload, term, timeout, down = data["rows"]
    websockets = drill.SHORT.websockets

    assert data["app"] == "main:app"
    assert "POST /message + GET /" in data["load"] and "WebSockets on /ws (echo)" in data["load"]
    assert "no room members" in data["load"], "the rooms are the demo's: none on another app"
    for row in (reload, term):
        assert_consistent(row, websockets, room_members=0)
        assert row["status"] == "passed" and row["lost"] == 0, (row["failures"], row["ws_failed_by_reason"])
        assert set(row["by_method"]["POST"]) == {"201"} and set(row["by_method"]["GET"]) == {"200"}
        assert row["ws_echoes"] > 0 and row["ws_wrong_echoes"] == 0
    assert reload["ws_closes"].get("1012", 0) >= websockets, "a reload closes every WebSocket with 1012"
    for row, route in ((timeout, "/api/blocking"), (down, "/api/slow")):
        assert row["status"] == "skipped" and row["reason"] == (
            f"needs the demo's {route}: APP_MODULE=main:app is not the demo (service.app:app)"
        )
    assert code == 0


@pytest.mark.loadtest
def test_a_websocket_that_does_not_echo_is_refused_by_name(tmp_path: Path) -> None:
    # The demo's ticker pushes instead of echoing: the drill's clients cannot count on it.
    argv = ["--drill", "baseline", "--short", "--ws-path", "/ws/ticker", "--out-root", str(tmp_path)]
    code = drill.main(argv, base=base_env())
    _, data = report(tmp_path)
    (row,) = data["rows"]
    assert row["status"] == "error" and code == 1
    assert "DRILL_WS=/ws/ticker: 6 of 6 clients had no echo of their first message" in row["reason"]
    assert 'it answered \'{"tick":0' in row["reason"], row["reason"]


def test_a_drill_whose_needs_are_missing_is_a_skipped_row_saying_which(tmp_path: Path) -> None:
    """node-loss needs a swarm of three nodes and commands that take one down: without them it is skipped
    with the reason (exit 0), whatever RUNTIME says; nothing starts."""
    nowhere = {**base_env(), "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    code = drill.main(["--drill", "node-loss", "--out-root", str(tmp_path)], base=nowhere)
    _, data = report(tmp_path)
    (row,) = data["rows"]
    assert code == 0 and row["status"] == "skipped" and row["runtime"] == drill.BY_NAME["node-loss"].runtime
    assert row["reason"].startswith("no Docker engine reachable")
    site = capabilities.Site(nowhere)
    assert capabilities.swarm_of(3)(site) == (
        f"needs a swarm of 3 ready nodes at DOCKER_HOST (unix://{tmp_path}/no-engine.sock has 0); "
        "deploy/multinode/nodes.sh makes one on this host (docs/SWARM.md)"
    )
    assert "DRILL_NODE_DOWN" in (capabilities.node_control(site) or "")
    down = capabilities.Site(nowhere, "ssh {node} systemctl stop docker", "ssh {node} systemctl start docker")
    assert capabilities.node_control(down) is None
    needs = drill.BY_NAME["node-loss"].site_needs
    assert capabilities.node_control in needs and capabilities.engine in needs
