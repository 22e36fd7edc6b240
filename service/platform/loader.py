"""Load APP_MODULE: the app's own errors said in one line that names APP_MODULE, the traceback kept apart.

    python -m service.platform.loader [--lifespan]

loads APP_MODULE (from APP_SRC) in this environment, checks that the platform's paths shadow none of its
routes, and with --lifespan also runs its lifespan startup and shutdown within APP_STARTUP_TIMEOUT. It
prints one line; on failure it exits 1 with the line on stderr, followed by the app's traceback. Warnings
(`warning: ` lines on stderr) do not fail it: a platform path inside a catch-all route, a WebSocket route
that no NGINX_WEBSOCKET_PATHS entry covers (nginx would proxy it with the HTTP timeouts).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from service import websocket_paths
from service.platform.lifespan import AppLifespan, LifespanError, describe
from service.platform.types import ASGIApp
from service.settings import ConfigError, Settings, load_settings

EXIT_FAILED = 1


class AppLoadError(Exception):
    """APP_MODULE (or APP_SRC) cannot be served: one line; the app's own exception, if any, its cause."""


def put_source_first(app_src: str) -> None:
    """APP_SRC first on the import path, ahead of the repository and the installed packages."""
    if not app_src:
        return
    path = os.path.abspath(app_src)
    if not os.path.isdir(path):
        raise AppLoadError(f"APP_SRC={app_src}: no such directory (seen from {os.getcwd()})")
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)


def load(spec: str, app_src: str = "") -> ASGIApp:
    """The ASGI app `spec` names: `module:attribute` or a factory `module:create_app()`."""
    put_source_first(app_src)
    where = f"APP_MODULE={spec}"
    module_name, _, attribute = spec.partition(":")
    factory = attribute.endswith("()")
    attribute = attribute.removesuffix("()")
    if not module_name or not attribute:
        raise AppLoadError(f"{where}: expected module:attribute or module:factory()")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        hint = ""
        if isinstance(error, ModuleNotFoundError) and error.name == module_name.split(".")[0]:
            hint = f" (searched APP_SRC={app_src or '(empty: the repository root)'} and site-packages)"
        said = f"{where}: module {module_name} does not import: {describe(error)}{hint}"
        raise AppLoadError(said) from error
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AppLoadError(f"{where}: module {module_name} has no attribute {attribute}") from None
    if factory:
        if not callable(found):
            raise AppLoadError(f"{where}: {attribute} is a {type(found).__name__}, not a factory to call")
        try:
            found = found()
        except Exception as error:
            raise AppLoadError(f"{where}: {attribute}() raised {describe(error)}") from error
        if inspect.isawaitable(found):
            if inspect.iscoroutine(found):
                found.close()
            raise AppLoadError(f"{where}: {attribute}() returned an awaitable; a factory must be a plain def")
    problem = asgi_problem(found)
    if problem:
        raise AppLoadError(f"{where}: not an ASGI app: {problem}")
    app: ASGIApp = found
    return app


def asgi_problem(app: object) -> str | None:
    """Why `app` is no ASGI 3 app (`async def app(scope, receive, send)`, or an object whose __call__ is
    one), or None."""
    if not callable(app):
        return f"a {type(app).__name__} is not callable"
    if inspect.isclass(app):
        return f"{app.__name__} is a class; name an instance, or a factory as module:{app.__name__}()"
    call = app if inspect.isroutine(app) else type(app).__call__
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return None
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return None  # a builtin that will not say: let it run
    if takes(signature, 3):
        return None  # a plain callable returning an awaitable, as some wrappers are
    if takes(signature, 2):
        return (
            f"{name_of(app)} is a synchronous callable of two arguments, a WSGI app (environ, "
            "start_response); the blueprint serves ASGI apps: async def app(scope, receive, send)"
        )
    return f"{name_of(app)} is a synchronous callable; an ASGI app is async def app(scope, receive, send)"


def takes(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def name_of(app: object) -> str:
    return str(getattr(app, "__qualname__", None) or type(app).__name__)


# --- the app's routes, and the platform's paths that would shadow them ------------------------------


def route_paths(app: object) -> list[str] | None:
    """The path templates of a Starlette-like app (`app.routes[*].path`; FastAPI's included routers and
    Starlette's mounts opened), or None when the app does not list its routes. A mount that lists none
    (static files, another framework) is `prefix/{path:path}`: everything under it."""
    routes = listed_routes(app)
    return None if routes is None else [path for path, _ in paths_of(routes, "")]


def websocket_route_paths(app: object) -> list[str] | None:
    """The path templates of the app's WebSocket routes, as route_paths finds routes (None: not listed)."""
    routes = listed_routes(app)
    return None if routes is None else [path for path, route in paths_of(routes, "") if is_websocket(route)]


def listed_routes(app: object) -> list[Any] | None:
    for _ in range(10):  # through ASGI middleware objects that keep the app they wrap as `.app`
        routes = getattr(app, "routes", None)
        if isinstance(routes, list | tuple):
            return list(routes)
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def is_websocket(route: object) -> bool:
    """Starlette's WebSocketRoute (FastAPI's APIWebSocketRoute is one), known by its class's name: the
    platform imports no framework."""
    return route is not None and any(cls.__name__ == "WebSocketRoute" for cls in type(route).__mro__)


def paths_of(routes: Iterable[Any], prefix: str) -> Iterator[tuple[str, Any]]:
    """(path template, route) of each route; the route is None for a mount that lists none."""
    for route in routes:
        candidates = getattr(route, "effective_candidates", None)
        if callable(candidates):  # FastAPI >= 0.137 keeps an included router as one node
            yield from paths_of(candidates(), prefix)
            continue
        # FastAPI >= 0.137's candidate of a WebSocket route has no path of its own: its route has it.
        route = getattr(route, "starlette_route", None) or route
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        inner = getattr(route, "routes", None)
        if hasattr(route, "app") and isinstance(inner, list | tuple):  # a mount
            if inner:
                yield from paths_of(inner, prefix + path)
            else:
                yield f"{prefix}{path}/{{path:path}}", None
        else:
            yield prefix + path, route


PARAMETER = re.compile(r"\{([^}:]+)(?::([^}]+))?\}")


def template_pattern(template: str) -> tuple[re.Pattern[str], bool]:
    """The paths a route template matches, and whether it is a catch-all (a `{name:path}` parameter)."""
    parts, position, catch_all = [], 0, False
    for found in PARAMETER.finditer(template):
        parts.append(re.escape(template[position : found.start()]))
        catch_all = catch_all or found.group(2) == "path"
        parts.append(".*" if found.group(2) == "path" else "[^/]+")
        position = found.end()
    parts.append(re.escape(template[position:]))
    return re.compile("".join(parts)), catch_all


@dataclass(frozen=True)
class Shadow:
    """A platform path the app also serves (`other` is its route template: the platform answers first,
    so the app never sees it), or that another platform path repeats (`other` is that knob)."""

    knob: str
    path: str
    other: str
    kind: Literal["route", "catch-all", "platform"]

    @property
    def severity(self) -> Literal["error", "warning"]:
        return "warning" if self.kind == "catch-all" else "error"

    def __str__(self) -> str:
        if self.kind == "platform":
            return f"{self.knob}={self.path} is {self.other}'s path too. Fix: give each its own path"
        what = "the app's route" if self.kind == "route" else "part of the app's catch-all route"
        return (
            f"{self.knob}={self.path} shadows {what} {self.other}: the platform answers {self.path} before "
            f"the app, whose handler never runs. Fix: set {self.knob} to a path the app does not serve"
        )


def platform_paths(settings: Settings) -> dict[str, str]:
    return {
        "APP_LIVENESS_PATH": settings.app_liveness_path,
        "APP_READINESS_PATH": settings.app_readiness_path,
        "APP_METRICS_PATH": settings.app_metrics_path,
    }


def shadowed(app_routes: Iterable[str], platform: Mapping[str, str]) -> list[Shadow]:
    """Pure: the app's route templates and the platform's paths (knob -> path) -> what collides."""
    findings: list[Shadow] = []
    first: dict[str, str] = {}
    for knob, path in platform.items():
        if path in first:
            findings.append(Shadow(knob, path, first[path], "platform"))
        first.setdefault(path, knob)
    for template in app_routes:
        pattern, catch_all = template_pattern(template)
        for knob, path in platform.items():
            if pattern.fullmatch(path):
                findings.append(Shadow(knob, path, template, "catch-all" if catch_all else "route"))
    return findings


def unproxied_websockets(templates: Iterable[str], settings: Settings) -> list[str]:
    """A warning for each WebSocket route nginx proxies with the HTTP timeouts: none of
    NGINX_WEBSOCKET_PATHS covers it."""
    paths = settings.nginx_websocket_paths
    warnings = []
    for template in websocket_paths.uncovered(templates, paths):
        entry = websocket_paths.suggestion(template)
        fix = f"add {entry} to NGINX_WEBSOCKET_PATHS" if entry else "serve it under a path prefix"
        http, ws = settings.nginx_proxy_read_timeout, settings.nginx_ws_read_timeout
        warnings.append(
            f"its WebSocket route {template} is not under NGINX_WEBSOCKET_PATHS={paths or '(empty)'}: nginx "
            f"cuts it after NGINX_PROXY_READ_TIMEOUT={http}s without a frame, not NGINX_WS_READ_TIMEOUT="
            f"{ws}s, and rule 2 does not hold for it. Fix: {fix}"
        )
    return warnings


def source_problems(settings: Settings) -> list[str]:
    """APP_SRC and APP_REQUIREMENTS as this host sees them (relative paths: from the current directory)."""
    problems = []
    if settings.app_src and not os.path.isdir(settings.app_src):
        problems.append(f"APP_SRC={settings.app_src}: no such directory (seen from {os.getcwd()})")
    if settings.app_requirements and not os.path.isfile(settings.app_requirements):
        where = f"APP_REQUIREMENTS={settings.app_requirements}"
        problems.append(f"{where}: no such file (seen from {os.getcwd()})")
    return problems


# --- the command line -------------------------------------------------------------------------------


async def run_lifespan(app: ASGIApp, timeout: float) -> None:
    """Startup, then shutdown, both within `timeout` seconds."""
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    lifespan = AppLifespan(app, scope)
    started = time.monotonic()
    await lifespan.startup(timeout)
    try:
        async with asyncio.timeout(max(0.0, timeout - (time.monotonic() - started))):
            await lifespan.shutdown()
    except TimeoutError:
        raise LifespanError(
            f"lifespan startup and shutdown did not finish within APP_STARTUP_TIMEOUT={timeout:g}s"
        ) from None


def fail(line: str, error: BaseException | None = None) -> int:
    print(line, file=sys.stderr, flush=True)
    if error is not None:
        traceback.print_exception(error, file=sys.stderr)
    return EXIT_FAILED


def exit_if_blocked(spec: str, timeout: float) -> threading.Timer:
    """asyncio cannot time out a startup that blocks the event loop (sync code in `async def`): this can."""

    def blocked() -> None:
        line = f"APP_MODULE={spec}: lifespan did not finish within APP_STARTUP_TIMEOUT={timeout:g}s"
        print(f"{line} (the event loop is blocked)", file=sys.stderr, flush=True)
        os._exit(EXIT_FAILED)

    timer = threading.Timer(timeout + 0.5, blocked)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.platform.loader", description="Load APP_MODULE; say in one line how it went."
    )
    parser.add_argument("--lifespan", action="store_true", help="also run its lifespan startup and shutdown")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as error:
        return fail(str(error))
    spec = settings.app_module
    problems = source_problems(settings)
    if problems:
        return fail(problems[0])
    started = time.monotonic()
    try:
        app = load(spec, settings.app_src)
    except AppLoadError as error:
        return fail(str(error), error.__cause__)
    routes = route_paths(app)
    shadows = shadowed(routes or [], platform_paths(settings))
    for shadow in shadows:
        if shadow.severity == "error":
            return fail(f"APP_MODULE={spec}: {shadow}")
    said = f"{len(routes)} routes" if routes is not None else "routes not listed (not a Starlette-like app)"
    if args.lifespan:
        timer = exit_if_blocked(spec, settings.app_startup_timeout)
        try:
            asyncio.run(run_lifespan(app, settings.app_startup_timeout))
        except LifespanError as error:
            return fail(f"APP_MODULE={spec}: {error}", error.__cause__)
        finally:
            timer.cancel()
        said += ", lifespan startup and shutdown ok"
    for warning in [*map(str, shadows), *unproxied_websockets(websocket_route_paths(app) or [], settings)]:
        print(f"warning: APP_MODULE={spec}: {warning}", file=sys.stderr)
    elapsed = time.monotonic() - started
    print(f"APP_MODULE={spec}: an ASGI app ({type(app).__name__}), {said} in {elapsed:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
