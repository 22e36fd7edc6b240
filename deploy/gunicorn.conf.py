# Gunicorn configuration of the blueprint — read it top to bottom once; every value comes from a knob.
#
# Values are not written here: each setting reads its knob from service/settings.py, where the env name,
# default, unit and effect are defined once (docs/SETTINGS.md is the same table rendered). Gunicorn re-runs
# this file on HUP (`make reload`), so changed knobs apply to the new workers without dropping requests.
#
# Request path: nginx -> this master's listening socket -> N worker processes, each one uvicorn event loop
# serving APP_MODULE (the demo FastAPI app, service.app:app, by default) inside the platform
# (service/platform/: request id, metrics, probes, deadline, drain).

import os
import tempfile

# prometheus-client picks its multiprocess mode when first imported, so the directory must be known
# before any worker imports the app. Each worker writes its own files there; /metrics sums them.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"blueprint-metrics-{os.getpid()}")
)
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from service.platform import PLATFORM_APP  # noqa: E402
from service.platform.loader import put_source_first  # noqa: E402
from service.settings import OUR_WORKER_CLASS, load_settings  # noqa: E402

settings = load_settings()

# --- What to serve ---------------------------------------------------------------------------------
# wsgi_app: the ASGI app, `module:attribute` or a factory `module:create_app()`. Our worker class loads it
#   with service/platform/loader.py (one-line errors naming APP_MODULE; an app that fails to load or to
#   start stops gunicorn instead of being booted again) and serves it inside the platform. A HUP re-reads
#   it. Any other worker class (gunicorn's `asgi`) gets service.platform.serve:app, APP_MODULE already
#   inside the platform, so that its probes and metrics are there too. (APP_MODULE)
wsgi_app = settings.app_module if settings.gunicorn_worker_class == OUR_WORKER_CLASS else PLATFORM_APP

# APP_SRC goes first on the import path here, in the master (gunicorn's `pythonpath` setting is applied
#   only after --check-config has loaded the app); the workers inherit it. (APP_SRC)
put_source_first(settings.app_src)

# bind: where the master listens. Only nginx should reach it. Locally keep it on loopback; in compose it
#   is 0.0.0.0:8000 on the internal network and no port is published. (GUNICORN_BIND)
bind = [settings.gunicorn_bind]

# backlog: connections the kernel queues before a worker accepts them. The kernel silently caps it at
#   net.core.somaxconn (often 4096 on hosts, sometimes 128 in containers: set compose sysctls).
#   Typical 64-2048. Too small: connection resets under bursts. (GUNICORN_BACKLOG)
backlog = settings.gunicorn_backlog

# --- Workers ---------------------------------------------------------------------------------------
# workers: processes, each with one event loop. Default: the CPUs this process may use (affinity and
#   cgroup cpu.max quota) — multiprocessing.cpu_count() ignores container limits. Async IO-bound work
#   needs no more than one per CPU; more only adds memory and context switches. (WEB_CONCURRENCY)
workers = settings.workers

# worker_class: our subclass of uvicorn_worker.UvicornWorker (not the deprecated uvicorn.workers one). It
#   passes UVICORN_* knobs that uvicorn-worker ignores. `asgi` selects gunicorn's own ASGI worker, to
#   compare; UVICORN_* knobs then do nothing. gunicorn's `threads` and `worker_connections` do not apply to
#   either. (GUNICORN_WORKER_CLASS)
worker_class = settings.gunicorn_worker_class

# timeout: for async workers a *liveness heartbeat*, not a request timeout. uvicorn's main loop touches
#   the heartbeat every tick; synchronous code inside `async def` stops the tick, and after `timeout`
#   seconds the master SIGABRTs the worker — all its in-flight requests fail (nginx answers 502). Raise
#   it only if you knowingly block longer; better fix the blocking code. Typical 30-120. (GUNICORN_TIMEOUT)
timeout = settings.gunicorn_timeout

# worker_tmp_dir: where the heartbeat file lives. On a disk-backed /tmp a slow disk can stall the
#   heartbeat and kill healthy workers; /dev/shm is memory.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None

# graceful_timeout: after TERM (stop) or HUP (reload), old workers stop accepting and get this long to
#   drain (below), then SIGKILL. Must exceed UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN and stay below compose
#   stop_grace_period. (GUNICORN_GRACEFUL_TIMEOUT)
graceful_timeout = settings.gunicorn_graceful_timeout

# --- Loss-free worker exit (the drain of service/platform/worker.py; docs/TUNING.md "Loss-free worker exit")
# A worker exits on HUP (reload: the master forks the new workers first, then TERMs the old), on TERM (one
#   worker, or all of them when the master stops), and by itself after max_requests. nginx keeps idle
#   connections to the app in a pool (NGINX_UPSTREAM_KEEPALIVE) and takes the most recently used one for
#   the next request without checking it; a request on a connection the app closes at that moment fails
#   with 502, and for POST nginx does not try again (it would run it twice). Plain uvicorn closes every idle
#   connection the moment it stops: measured ~30 x 502 per worker exit at 5,000 POST/s. Our worker instead:
#   1. stops accepting (closes its copy of the listening socket; the other workers and, on HUP, the new
#      generation share it, so nothing queued there is lost — on HUP new connections wait in the backlog
#      for the ~0.5 s the new workers take to boot). A max_requests recycle first keeps accepting, with
#      step 2, until nginx has let go of the connections it had: the master forks its replacement only
#      after it exits. And it starts only while another worker accepts (they take turns: RecycleTurns,
#      files under worker_tmp_dir), or two recycling at once left nobody accepting for seconds;
#   2. answers every request that still arrives on an open connection, adding `Connection: close`, so nginx
#      drops that connection from its pool after the response instead of reusing it;
#   3. never closes an idle connection itself: nginx closes it after NGINX_UPSTREAM_KEEPALIVE_TIMEOUT idle
#      (no race, nginx decides), or uvicorn's own `keepalive` timer does, later by rule 1;
#   4. closes its WebSockets with 1012 one by one over UVICORN_WS_CLOSE_SPREAD, so clients reconnect over
#      seconds, not in one burst;
#   5. exits when no connection is left (tens of ms under steady load, when nginx reuses every pooled
#      connection at once; up to NGINX_UPSTREAM_KEEPALIVE_TIMEOUT for ones it leaves idle), at the latest
#      after UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN, which must therefore exceed NGINX_UPSTREAM_KEEPALIVE_TIMEOUT
#      (and stay below graceful_timeout, which SIGKILLs). It keeps the heartbeat (`timeout`) going.
#   Measured, POST through nginx with two HUPs and a TERM: 77 x 502 of 16661 before, 0 of 16208 after.
#   A stopping master (`make down`, container stop) has no other worker to take new connections: stop
#   nginx first (make down and compose do), or what nginx sends after the drain is refused.

# keepalive: seconds an idle keep-alive connection stays open (uvicorn's timeout_keep_alive). Gunicorn's
#   default is 2 s, which is right for clients talking to gunicorn directly and wrong behind nginx: nginx
#   pools upstream connections for NGINX_UPSTREAM_KEEPALIVE_TIMEOUT, and if the app closes first nginx
#   may send a request into a closing socket -> sporadic 502 (not retried for POST). (GUNICORN_KEEPALIVE)
keepalive = settings.gunicorn_keepalive

# max_requests / max_requests_jitter: recycle a worker after N + random(0..jitter) HTTP requests to
#   contain slow leaks. Always set jitter (10-50 %) so workers do not restart together. WebSocket traffic
#   never counts. A recycle is a worker exit like any other — drained, nothing lost — but it costs a boot
#   (~0.5 s CPU) and closes that worker's WebSockets (1012). Default 1,000,000 (gunicorn: 0 = never; was
#   10,000): worker RSS stayed flat over 230,000 requests each, and 10,000 recycled a worker every ~4 s at
#   2,500 req/s; 300 cut throughput to a third. Size it from measured growth, in hours. 0 disables.
#   (GUNICORN_MAX_REQUESTS, GUNICORN_MAX_REQUESTS_JITTER)
max_requests = settings.gunicorn_max_requests
max_requests_jitter = settings.gunicorn_max_requests_jitter

# --- Proxy trust -----------------------------------------------------------------------------------
# forwarded_allow_ips: peers whose X-Forwarded-For / X-Forwarded-Proto are believed; the app then sees
#   the client address nginx reports. nginx must *set* X-Forwarded-For to $remote_addr at the edge (not
#   append), or a client can choose its own address. '*' trusts anyone who reaches the app port.
#   (GUNICORN_FORWARDED_ALLOW_IPS)
forwarded_allow_ips = settings.gunicorn_forwarded_allow_ips

# --- Logging ---------------------------------------------------------------------------------------
# The platform writes one JSON access line per request itself (service/platform/middleware.py) with the
# request id nginx passes in X-Request-ID: uvicorn workers do not use gunicorn's access_log_format.
loglevel = settings.gunicorn_log_level
errorlog = "-"
accesslog = None
proc_name = "blueprint-app"

# control_socket (gunicorn >= 25): a socket in $HOME for `gunicornc`. Two stacks on one host would share
#   its path, and read-only containers cannot create it; the blueprint drives gunicorn with signals.
control_socket_disable = True


# --- Hooks: the metrics of every worker, and why each one ended ----------------------------------------
# The master records each worker's end and its reason (timeout, recycle, reload, stop, terminated, exit,
# crash: service/platform/exits.py says how each is told apart), which /metrics shows as
# app_worker_exits_total{reason}, and removes the ended worker's per-worker gauges, so that /metrics lists
# the live workers only.


def on_starting(server):  # type: ignore[no-untyped-def]
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))
    from service.platform import exits

    exits.clear(metrics_dir)


def on_reload(server):  # type: ignore[no-untyped-def]
    from service.platform import exits

    exits.reload_began(server)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    from service.platform import exits

    exits.leave_note(worker.pid, "exit")  # unless the worker noted a reason of its own


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    from service.platform import exits

    exits.worker_ended(server, worker)
    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server):  # type: ignore[no-untyped-def]
    from service.platform.worker import RecycleTurns

    RecycleTurns.of_master(os.getpid(), workers, worker_tmp_dir).remove()
