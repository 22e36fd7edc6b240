"""NGINX_WEBSOCKET_PATHS: the paths nginx proxies as WebSockets, with NGINX_WS_READ_TIMEOUT instead of the
HTTP timeouts (NGINX_PROXY_READ_TIMEOUT), as nginx `location`s; and which WebSocket routes of an app they
cover.

The value is space-separated. An entry ending in `/` is a prefix: every path under it, and the path without
its slash (`/chat/` covers /chat/socket, /chat/rooms/1 and /chat). Any other entry is one exact path
(`/api/v1/stream/ws` covers that path only). deploy/nginx/entrypoint.sh derives the same locations in sh.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# The characters of PLATFORM_PATH (service/settings.py): nginx names such a path unquoted in a `location`.
ENTRY = re.compile(r"^/[A-Za-z0-9._~/-]*$")
# nginx's own locations in the public server: its JSON error pages and its status paths.
NGINX_OWN = ("/_edge", "/_nginx")
# The template's rate-limited HTTP locations (`location /api/`, `location = /api`).
HTTP_OWN = ("/api", "/api/")


def entries(value: str) -> list[str]:
    return value.split()


def locations(value: str) -> list[str]:
    """The nginx `location` arguments of a valid value, in order: `/chat/` is `/chat/` and `= /chat` (without
    the exact match nginx answers /chat with a 301 to /chat/, which fails a WebSocket handshake); `/x/ws` is
    `= /x/ws`."""
    found: list[str] = []
    for entry in entries(value):
        found += [entry, f"= {entry[:-1]}"] if entry.endswith("/") else [f"= {entry}"]
    return found


def covers(entry: str, path: str) -> bool:
    """Whether the locations of `entry` take requests for `path`."""
    if entry.endswith("/"):
        return path.startswith(entry) or path == entry[:-1]
    return path == entry


def covers_route(entry: str, template: str) -> bool:
    """Whether `entry` takes every path of a route template (`/rooms/{room}/ws`)."""
    literal, parameter, _ = template.partition("{")
    if not parameter:
        return covers(entry, template)
    return entry.endswith("/") and literal.startswith(entry)


def entry_problem(entry: str) -> str | None:
    if not ENTRY.fullmatch(entry):
        return f"{entry!r} is no path: each entry starts with / and has letters, digits, . _ ~ - and / only"
    if entry == "/":
        return "'/' would take every request, the HTTP routes too: name the paths that serve WebSockets"
    if "//" in entry or any(segment in (".", "..") for segment in entry.split("/")):
        return f"{entry!r} never matches: nginx merges // and resolves . and .. before it picks a location"
    for own in NGINX_OWN:
        if entry.rstrip("/") == own or entry.startswith(own + "/"):
            return f"{entry!r} is under nginx's own {own}/ (its error pages and status paths)"
    if entry in HTTP_OWN:
        return (
            f"{entry!r} is nginx's rate-limited HTTP location (NGINX_LIMIT_REQ_*): name the WebSocket paths "
            "under it, e.g. /api/stream/"
        )
    return None


def problem(value: str, platform: Mapping[str, str]) -> str | None:
    """The rule `value` breaks as NGINX_WEBSOCKET_PATHS, or None. `platform`: the platform's own paths
    (knob -> path), which the platform answers over HTTP and no WebSocket location may take."""
    seen: list[str] = []
    for entry in entries(value):
        said = entry_problem(entry)
        if said:
            return said
        for earlier in seen:
            if earlier == entry:
                return f"{entry!r} is listed twice"
            if covers(earlier, entry.rstrip("/")) or covers(entry, earlier.rstrip("/")):
                return (
                    f"{entry!r} and {earlier!r} overlap (a prefix /x/ also takes /x): keep the one that "
                    "covers the other"
                )
        for knob, path in platform.items():
            if covers(entry, path):
                return (
                    f"{entry!r} takes {knob}={path}, which the platform answers over HTTP: move one of them"
                )
        seen.append(entry)
    return None


def uncovered(templates: Iterable[str], value: str) -> list[str]:
    """The WebSocket route templates no entry of `value` covers, in order."""
    return [t for t in templates if not any(covers_route(entry, t) for entry in entries(value))]


def suggestion(template: str) -> str | None:
    """An entry that would cover `template`: the path itself, or for a template with parameters the prefix
    before them; None when only `/` would."""
    if "{" not in template:
        return template
    prefix = template[: template.index("{")].rsplit("/", 1)[0] + "/"
    return None if prefix == "/" else prefix
