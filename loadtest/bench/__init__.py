"""`make bench`: how close the blueprint's hot path is to a bare FastAPI app, in one run, side by side.

    python -m loadtest.bench                          # every row, 10 s each
    python -m loadtest.bench --bench bare,blueprint-direct --seconds 20
    python -m loadtest.bench --short                  # 2 s rows, small N: for tests

The same generator (wrk -t1) and the same worker count for every row: nginx `return 200`; a bare FastAPI
hello under gunicorn + uvicorn-worker (hello.py); the blueprint on its gunicorn bind and through nginx, under
`uvicorn --workers N`, granian and gunicorn's own `-k asgi` worker; then capacity: BENCH_SLOW_N slow requests
and BENCH_WS_N WebSockets held through nginx. It writes reports/bench-<time>/: bench.json, bench.md and
bench.png, with the machine, its load average before and after, and rows whose generator was CPU-bound.
The blueprint serves APP_MODULE like `make up` and the throughput rows GET BENCH_PATH (the demo's /api/ping
by default; the bare row always GETs hello.py's); slow-held and ws-held hold demo routes (/api/slow,
/ws/echo) and are skipped, saying so, for another app.

rows.py: the rows and inputs; servers.py: each server, started and stopped; wrk.py: one wrk run and the CPU
it and the server used; capacity.py: the held slow requests and WebSockets; run.py: the run; report.py:
the files; cli.py: the command line.
"""

from loadtest.bench.cli import main
from loadtest.bench.rows import NAMES, ROWS, SHORT, BenchError, Params, Row, RowSpec, parse_params, parse_rows
from loadtest.bench.run import run_bench

__all__ = [
    "NAMES",
    "ROWS",
    "SHORT",
    "BenchError",
    "Params",
    "Row",
    "RowSpec",
    "main",
    "parse_params",
    "parse_rows",
    "run_bench",
]
