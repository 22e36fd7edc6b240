"""`Platform`: any ASGI app inside the blueprint's platform, itself a plain ASGI app.

Around the app, outermost first: the lifespan (the app's own within APP_STARTUP_TIMEOUT, then the worker's
tuning and its event-loop probe: loopwatch.py), the request context (request id, time-to-first-byte
deadline, metrics, access line: middleware.py) and the probes (the platform's paths, answered before the
app: probes.py).
"""

from __future__ import annotations

import gc
import logging
import time

from service.platform import metrics
from service.platform.lifespan import AppLifespan, LifespanError
from service.platform.loopwatch import LoopWatch
from service.platform.middleware import RequestContextMiddleware, configure_logging
from service.platform.probes import Probes
from service.platform.types import ASGIApp, Receive, Scope, Send
from service.settings import Settings, load_settings

log = logging.getLogger("service.platform")


def tune_worker(settings: Settings) -> None:
    """What each worker sets once the app has started: the threadpool size (AnyIO's, when the app uses
    AnyIO: Starlette's `def` routes, FastAPI's sync dependencies), and the GC after `gc.freeze()`."""
    try:
        import anyio.to_thread
    except ImportError:
        pass
    else:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.app_threadpool_tokens
    gc.freeze()
    gc.set_threshold(*settings.gc_thresholds)
    metrics.WORKERS.set(1)


class Platform:
    """`name`: how the app was named (APP_MODULE), for the lines that say what went wrong."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None, name: str | None = None) -> None:
        settings = settings or load_settings()
        self.app = app
        self.settings = settings
        self.name = name or settings.app_module
        # When the app's lifespan startup began and whether it has ended (either way), for a watchdog
        # thread: a startup that blocks the event loop cannot time itself out (worker.py).
        self.startup_began: float | None = None
        self.startup_ended = False
        configure_logging(settings.app_log_level)
        self.probes = Probes(
            app, settings.app_liveness_path, settings.app_readiness_path, settings.app_metrics_path
        )
        self.requests = RequestContextMiddleware(
            self.probes,
            request_timeout=settings.app_request_timeout,
            access_log=bool(settings.app_access_log),
            max_routes=settings.app_metrics_max_routes,
            fixed_routes=self.probes.paths,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
        else:
            await self.requests(scope, receive, send)

    async def lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        app_lifespan = AppLifespan(self.app, scope)
        self.startup_began = time.monotonic()
        try:
            await app_lifespan.startup(self.settings.app_startup_timeout)
        except LifespanError as error:
            line = f"APP_MODULE={self.name}: {error}"
            log.error("%s", line, exc_info=error.__cause__)
            await send({"type": "lifespan.startup.failed", "message": line})
            return
        finally:
            self.startup_ended = True
        tune_worker(self.settings)
        watch = (
            LoopWatch(self.settings.app_loop_lag_interval) if self.settings.app_loop_lag_interval else None
        )
        if watch is not None:
            watch.start()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        if watch is not None:
            watch.stop()
        try:
            await app_lifespan.shutdown()
        except LifespanError as error:
            line = f"APP_MODULE={self.name}: {error}"
            log.error("%s", line, exc_info=error.__cause__)
            await send({"type": "lifespan.shutdown.failed", "message": line})
            return
        await send({"type": "lifespan.shutdown.complete"})
