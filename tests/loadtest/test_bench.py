"""`make bench`: bad input is refused in one line before anything starts; a short real run measures every
row — the same app behind nginx, HAProxy and Caddy among them — and writes bench.json (every row, every
field), bench.md and bench.png. No timing is asserted: the numbers belong to the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.stackctl import stack
from deploy.stackctl.config import ROOT
from loadtest import bench

THROUGHPUT_FIELDS = {
    "rps",
    "p50_ms",
    "p99_ms",
    "ratio_to_bare",
    "errors",
    "non_2xx",
    "socket_errors",
    "wrk_cpu_percent",
    "generator_cpu_bound",
    "server_cpu_us_per_request",
    "workers_replaced",
}
SLOW_FIELDS = {
    "n",
    "delay_s",
    "rps",
    "p50_ms",
    "p99_ms",
    "p99_over_delay_ms",
    "errors",
    "generator_cpu_bound",
}
WS_FIELDS = {
    *("n", "held_s", "connected", "drops", "rtt_p50_ms", "rtt_p99_ms", "rss_kib_per_ws"),
    *("worker_rss_held_mib", "worker_rss_end_mib"),
}


ROOMS_FIELDS = {
    *("n", "connected", "rate", "deliveries_per_s", "p50_ms", "p99_ms", "missing"),
    *("server_cpu_us_per_delivery", "client_cpu_percent", "largest_fanout_per_s", "steps"),
}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bench", "nope"], "BENCH=nope: unknown row 'nope' (rows: nginx-return, bare,"),
        (["--bench", "bare,granain"], "unknown row 'granain'; did you mean granian?"),
        (["--seconds", "abc"], "BENCH_SECONDS='abc': not a number"),
        (["--ws-n", "0"], "BENCH_WS_N='0': must be at least 1"),
        (["--ws-hold", "5m"], "BENCH_WS_HOLD='5m': not a number"),
        (["--slow-delay", "9999"], "BENCH_SLOW_DELAY=9999 is above APP_MAX_DELAY="),
        (["--path", "api/ping"], "BENCH_PATH='api/ping': a path starting with /, e.g. /api/ping"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_starts_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench.main([*argv, "--out-root", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert captured.out == ""
    assert not list(tmp_path.iterdir()), "nothing may run or be written for bad input"


@pytest.mark.loadtest
def test_a_short_run_measures_every_row_and_writes_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {**stack.isolated_base(), "RUNTIME": "local", "PROFILE": "default"}
    code = bench.main(["--short", "--out-root", str(tmp_path)], base=base)
    out = capsys.readouterr().out
    (report_dir,) = tmp_path.glob("bench-*")
    data = json.loads((report_dir / "bench.json").read_text())
    rows = {row["name"]: row for row in data["rows"]}

    assert list(rows) == list(bench.NAMES)
    for name, row in rows.items():
        assert row["status"] in ("ok", "skipped"), f"{name}: {row['note']}"
        if row["status"] == "skipped":
            assert name == "gunicorn-asgi" and "no `-k asgi` worker" in row["note"]
            continue
        kinds = {"throughput": THROUGHPUT_FIELDS, "slow": SLOW_FIELDS, "websocket": WS_FIELDS}
        fields = {**kinds, "rooms": ROOMS_FIELDS}[row["kind"]]
        assert fields <= set(row), f"{name} lacks {fields - set(row)}"
        if row["kind"] not in ("websocket", "rooms"):
            assert row["requests"] > 0 and row["rps"] > 0
            assert row["errors"] == row["non_2xx"] + sum(row["socket_errors"].values())
    assert code == 0
    assert rows["bare"]["ratio_to_bare"] == 1.0
    assert rows["ws-held"]["n"] == bench.SHORT.ws_n and rows["slow-held"]["n"] == bench.SHORT.slow_n
    assert rows["ws-held"]["held_s"] == bench.SHORT.seconds, "BENCH_WS_HOLD unset: held BENCH_SECONDS"
    fanout = rows["rooms-fanout"]
    assert fanout["connected"] == fanout["n"] == bench.SHORT.rooms_n and fanout["missing"] == 0, fanout
    first = fanout["steps"][0]
    assert first["rate"] == bench.SHORT.rooms_rate and first["delivered"] == first["published"] * fanout["n"]
    assert fanout["deliveries_per_s"] > 0 and fanout["server_cpu_us_per_delivery"] > 0
    assert set(first["server_cpu_s_by_role"]) >= {"app", "nginx", "redis"}, "Redis' CPU counts too"
    assert data["machine"]["cpu"] and data["load_average_before"] and data["load_average_after"]
    assert set(data["goals"]) == {
        *("blueprint_direct_over_bare", "blueprint_nginx_over_direct"),
        *("blueprint_direct_over_bare_by_cpu", "blueprint_nginx_over_direct_by_cpu"),
    }
    assert all(isinstance(ratio, float) for ratio in data["goals"].values())
    assert set(data["unix_vs_tcp"]) == {
        "rps_unix_over_tcp",
        "app_cpu_tcp_over_unix",
        "server_cpu_tcp_over_unix",
    }
    assert all(isinstance(ratio, float) for ratio in data["unix_vs_tcp"].values())
    assert rows["blueprint-nginx-unix"]["server_cpu_us_by_role"]["nginx"] > 0, "nginx was in the path"
    assert set(data["sampler"]) == {
        "rps_sampled_over_unsampled",
        "server_cpu_unsampled_over_sampled",
        "sampler_cpu_percent",
    }
    assert all(isinstance(value, float) for value in data["sampler"].values()), data["sampler"]
    series = report_dir / "rows" / "blueprint-nginx-sampled" / "stack-series.jsonl"
    assert len(series.read_text().splitlines()) >= bench.SHORT.seconds, "sampled once a second"
    for front in ("nginx", "haproxy", "caddy"):
        by_role = rows[f"blueprint-{front}"]["server_cpu_us_by_role"]
        assert set(by_role) - {"redis"} == {"app", front, "log pipes"}, f"{front}: every process on its path"
        assert by_role[front] > 0 and by_role["app"] > 0
        hop = data["proxy_hops"][front]
        assert set(hop) == {"rps", "hop_us", "front_us", "log_pipes_us", "app_extra_us"}
        assert hop["front_us"] == by_role[front] and isinstance(hop["hop_us"], float)
    direct = set(rows["blueprint-direct"]["server_cpu_us_by_role"]) - {"redis"}
    assert direct == {"app", "log pipes"}, "no proxy on the direct path"
    assert not list(report_dir.glob("servers/*/state.json")), "a stack was left up"

    page = (report_dir / "bench.md").read_text()
    assert all(f"| {name} |" in page for name in bench.NAMES)
    assert "load average" in page.lower() and data["machine"]["cpu"] in page and "Goals (issue 12)" in page
    assert "Unix socket vs TCP between nginx and gunicorn" in page
    assert "largest fan-out, p99 <= 250 ms" in page
    assert "The stack sampler beside the load" in page
    assert "The proxy hop side by side" in page and "| haproxy | " in page and "| caddy | " in page
    assert (report_dir / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "| blueprint-direct |" in out and str(report_dir / "bench.md") in out


@pytest.mark.loadtest
def test_a_short_run_on_another_app_measures_its_path_and_skips_the_demos_rows(tmp_path: Path) -> None:
    # BENCH_PATH=/ on the chat example (APP_MODULE, APP_SRC, as `make bench APP_MODULE=...` passes them on),
    # under the blueprint and under uvicorn's own process manager; the demo's slow and WebSocket rows skip.
    chat = ROOT / "examples" / "chat"
    base = {**stack.isolated_base(), "RUNTIME": "local", "PROFILE": "default"}
    base |= {"APP_MODULE": "main:app", "APP_SRC": str(chat)}
    argv = ["--short", "--bench", "blueprint-direct,slow-held,ws-held,uvicorn", "--path", "/"]
    code = bench.main([*argv, "--out-root", str(tmp_path)], base=base)
    (report_dir,) = tmp_path.glob("bench-*")
    data = json.loads((report_dir / "bench.json").read_text())
    rows = {row["name"]: row for row in data["rows"]}

    assert code == 0 and data["app"] == "main:app" and "GET /," in data["settings"]
    for name in ("blueprint-direct", "uvicorn"):
        row = rows[name]
        assert row["status"] == "ok", row["note"]
        assert row["requests"] > 0 and row["errors"] == 0, row  # a 404 would count: / is the app's
    for name, route in (("slow-held", "/api/slow"), ("ws-held", "/ws/echo")):
        assert rows[name]["status"] == "skipped"
        assert (
            rows[name]["note"]
            == f"needs the demo's {route}: APP_MODULE=main:app is not the demo (service.app:app)"
        )
    assert not list(report_dir.glob("servers/*/state.json")), "a stack was left up"
