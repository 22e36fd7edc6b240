"""The platform: what keeps any ASGI app's lifecycle safe and visible inside our gunicorn worker, as plain
ASGI. It imports no web framework: the app brings its own (the demo's is FastAPI, the `demo` extra).

- `asgi.Platform` wraps the app: its lifespan (with APP_STARTUP_TIMEOUT), then per request `middleware`
  (request id, time-to-first-byte deadline, access line, `metrics`) and `probes` (liveness, readiness,
  metrics, answered before the app at APP_LIVENESS_PATH, APP_READINESS_PATH, APP_METRICS_PATH).
- `worker.UvicornWorker` is the gunicorn worker: it loads APP_MODULE (`loader`), wraps it, and drains
  without loss (`lifecycle`).
- `loader` loads APP_MODULE with one-line errors; `python -m service.platform.loader` checks it.
"""

# APP_MODULE already inside the platform, for a server that takes an import path and no worker class.
PLATFORM_APP = "service.platform.serve:app"
