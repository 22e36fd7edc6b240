"""`make drill`: does the stack lose anything across a worker's lifecycle, under load?

    python -m loadtest.drill                           # every drill, 15 s each
    python -m loadtest.drill --drill worker-kill --seconds 30 --connections 64
    python -m loadtest.drill --server all              # the same on every app server (SERVER=...)

Each drill starts a fresh stack on free ports, loads it (wrk: POST DRILL_POST + GET DRILL_GET through
nginx, the demo's /api/echo and /api/ping by default; WebSocket clients on DRILL_WS, /ws/echo, that expect
their messages echoed and reconnect when closed), provokes one event — a reload, worker
recycling, a worker TERMed, KILLed or timed out, an nginx reload, a stop with requests in flight, and with a
Docker engine a recreated, scaled-down or killed app container — and counts what was lost against what the
event may lose. It writes reports/drill-<time>/: drill.json, index.html, servers.md and each stack's run
dir. The stacks serve APP_MODULE like `make up`; a drill that sends a demo route of its own (worker-timeout's
/api/blocking, down-in-flight's /api/slow) is skipped, saying so, for another app. With SERVER
(deploy/stackctl/servers.py) the app runs under uvicorn-worker's stock worker, gunicorn's `-k asgi`,
`uvicorn --workers` or granian instead, each event through that server's own mechanism.
On a swarm of three nodes (DOCKER_HOST at a manager, SWARM_REGISTRY) with DRILL_NODE_DOWN/UP set, node-loss
takes a node with an app task down under the same load. A drill whose needs the site lacks is skipped.

plan.py: inputs and the row; load.py: wrk and the WebSocket clients; drills.py: the events and their
allowances; capabilities.py: what a drill needs where it runs; containers.py and nodes.py: what the engine
and swarm drills ask of Docker; run.py: one stack per drill; report.py: the table and the files; cli.py:
the command line.
"""

from loadtest.drill.cli import main
from loadtest.drill.drills import BY_NAME, DRILLS, NAMES, Drill
from loadtest.drill.plan import SHORT, DrillError, LoadParams, Row, parse_drills, parse_load
from loadtest.drill.run import run_drill, run_drills

__all__ = [
    "BY_NAME",
    "DRILLS",
    "NAMES",
    "SHORT",
    "Drill",
    "DrillError",
    "LoadParams",
    "Row",
    "main",
    "parse_drills",
    "parse_load",
    "run_drill",
    "run_drills",
]
