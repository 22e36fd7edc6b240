"""Reading a rendered nginx.conf: the public server's locations, for the render tests of both renderers
(deploy/stackctl/config.py and deploy/nginx/entrypoint.sh)."""

from __future__ import annotations

import re

LOCATION = re.compile(r"^ +location ([^{\n]+) \{\n(.*?)^ +\}$", re.MULTILINE | re.DOTALL)


def public_locations(rendered: str) -> dict[str, list[str]]:
    """The public server's multi-line locations, in order: argument -> its directives (no comments)."""
    server = rendered.split("server_name ")[1].split("# Internal only")[0]
    found = {}
    for argument, body in LOCATION.findall(server):
        lines = [line.strip() for line in body.splitlines()]
        found[argument] = [line for line in lines if line and not line.startswith("#")]
    return found


def websocket_locations(rendered: str) -> dict[str, list[str]]:
    """The public server's WebSocket locations (those with `lingering_close always`)."""
    found = public_locations(rendered).items()
    return {argument: body for argument, body in found if "lingering_close always;" in body}
