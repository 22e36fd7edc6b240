"""The contract /openapi.json states: the success body of every route, and every error a client can get on
it — from the app, from uvicorn and from nginx — in the one shape of `service.errors.ErrorBody`.

`ERRORS` is the `responses=` mapping create_app gives every router; `contract` replaces FastAPI's own 422
body (HTTPValidationError), which the app never sends, with `InvalidRequest`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from service.errors import ErrorBody, InvalidRequest

REF = "#/components/schemas/{model}"
NDJSON = "application/x-ndjson"

DESCRIPTION = """\
Every error body, whichever layer sends it, is an `ErrorBody`; its `layer` says who answered: `app`,
`uvicorn` or `nginx`. Each route lists the statuses a client can get and which layer sends each.
`/api/stream` sends `application/x-ndjson`: one `StreamChunk` per line (`itemSchema`). A client that sends
its headers or body too slowly (NGINX_CLIENT_HEADER_TIMEOUT, NGINX_CLIENT_BODY_TIMEOUT) gets no response:
nginx closes the connection and logs a 408. A request nginx refuses before it knows the route (a request
line it cannot parse: 400, 414, 505; headers too large: 431) gets what every route documents for that
status; over HTTP/2, headers too large end the connection instead (GOAWAY ENHANCE_YOUR_CALM, no response).
With NGINX_TLS=1 the plain-HTTP port answers every request with a 308 to the same URL on HTTPS,
whose body is nginx's own short HTML page.

The WebSocket routes are not part of OpenAPI and so not described here: `/ws/echo` echoes text and binary
messages and closes with 1009 above UVICORN_WS_MAX_SIZE (a message's size, compressed or not);
`/ws/ticker?interval=S` pushes `{"tick", "pid", "t"}` every S seconds. A handshake the app refuses gets an
`ErrorBody` response instead of the 101: 404 `not_found` on a path with no WebSocket route, 422
`invalid_request` when S is refused.

`/ws/rooms/{room}?after=<id>` joins a room, whichever worker or replica each member is on. Each message of
the room reaches the member as one text frame `{"id": "<id>", "room": "<room>", "data": <any JSON>,
"sent_at": <unix seconds>}`, in the room's order; with `after`, every message after that id the room still
keeps comes first (ROOMS_HISTORY, ROOMS_HISTORY_SECONDS), then the live ones, with no gap and no duplicate.
Ids are opaque, unique and ordered per room. A member publishes by sending `{"data": <any JSON>}` (or
`POST /api/rooms/{room}/messages`). The server closes a member with 1008 for a bad room name, `after` or
message, or above ROOMS_PUBLISH_RATE; 1003 for a binary message; 1009 for `data` above
ROOMS_MAX_MESSAGE_BYTES; 1011 when Redis, the backplane, does not answer; 1012 when its worker restarts;
1013 when its send queue (ROOMS_SEND_QUEUE) is full or its worker follows ROOMS_MAX_ROOMS rooms. After
1011, 1012 and 1013 a client reconnects with `after` set to the last id it received (after 1011 with a
pause: joins fail with 1011 until Redis answers again) and misses nothing the room still keeps.
"""

Pid = Annotated[int, Field(description="The worker process that answered.")]
Seconds = Annotated[float, Field(description="The delay asked for, in seconds.")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ping(Body):
    pong: bool
    pid: Pid


class Echo(Body):
    text: str
    length: int
    pid: Pid


class Slow(Body):
    delay: Seconds
    pid: Pid
    concurrent: int = Field(description="Requests inside /api/slow on this worker as this one entered.")
    peak: int = Field(description="The most ever inside /api/slow at once on this worker.")


class Blocking(Body):
    delay: Seconds
    pid: Pid
    anti_pattern: str


class Sync(Body):
    delay: Seconds
    pid: Pid
    threadpool_tokens: int
    threadpool_borrowed: int = Field(description="Threadpool tokens in use as this request finished.")


class Cpu(Body):
    work: int
    result: int
    pid: Pid
    cpu_ms: float


class StreamChunk(Body):
    """One line of /api/stream."""

    chunk: int = Field(description="0, 1, ... `of` - 1.")
    of: int
    t: float = Field(description="Unix time the line was written.")


class Published(Body):
    id: str = Field(
        description="The message's id: opaque, unique and ordered within its room; what a member passes as "
        "`after` to resume from it."
    )


class Info(Body):
    pid: Pid
    hostname: str
    client: str | None = Field(description="The client address the app believes (after proxy headers).")
    x_forwarded_for: str | None
    request_id: str | None
    threadpool_tokens: int
    settings: dict[str, Any] = Field(description="The knobs this process receives, by field name.")
    settings_layers: list[str] = Field(description="Their layers: app, gunicorn, uvicorn.")


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: error(
        "nginx `bad_request`: a request nginx refuses: a request line it cannot parse, a malformed header, "
        "no or a bad Host, a bad Content-Length, both Content-Length and Transfer-Encoding, a broken chunked "
        "body. nginx `plain_http_to_https_port`: plain HTTP sent to the HTTPS port (NGINX_TLS=1)."
    ),
    404: error(
        "app `not_found`: no route has this path — any path not in this document. nginx `not_found`: a "
        "path nginx keeps off the public port (`/metrics`)."
    ),
    405: error("app `method_not_allowed`: the path has other methods. nginx `method_not_allowed`: TRACE."),
    413: error(
        "nginx `payload_too_large`: a body larger than NGINX_CLIENT_MAX_BODY_SIZE, on any method; the app "
        "never sees it. app `message_too_large`: a room message whose `data` is above "
        "ROOMS_MAX_MESSAGE_BYTES."
    ),
    414: error(
        "nginx `uri_too_long`: a request line longer than one of nginx's large_client_header_buffers (8k)."
    ),
    421: error(
        "nginx `misdirected_request`: a Host (or TLS server name) that is not one of NGINX_SERVER_NAMES; the "
        "app never sees it."
    ),
    429: error(
        "nginx `rate_limited`: on `/api/` routes when NGINX_LIMIT_REQ_ENABLED=1, above NGINX_LIMIT_REQ_RATE "
        "per client IP plus NGINX_LIMIT_REQ_BURST."
    ),
    431: error(
        "nginx `headers_too_large`: a header line longer than one of nginx's large_client_header_buffers "
        "(8k), or all headers longer than all four (nginx's own 494, which it would send as a 400)."
    ),
    500: error("app `internal_error`: an unhandled exception, in the app's log. nginx `proxy_error`."),
    501: error("nginx `not_implemented`: a Transfer-Encoding other than `chunked`."),
    502: error(
        "nginx `bad_gateway`: the app closed or refused the connection: a worker killed (GUNICORN_TIMEOUT), "
        "crashed or restarting, or a keep-alive race (`make check` rule 1)."
    ),
    503: error(
        "uvicorn `over_capacity`: the worker holds UVICORN_LIMIT_CONCURRENCY connections; retry. nginx "
        "`service_unavailable`: above NGINX_LIMIT_CONN connections per client IP "
        "(NGINX_LIMIT_CONN_ENABLED=1), or no app. app `draining` (`/readyz`): the worker is shutting down. "
        "app `backplane_unavailable`: Redis, which carries the rooms, did not answer within REDIS_TIMEOUT; "
        "retry."
    ),
    504: error(
        "app `request_timeout`: no response started within APP_REQUEST_TIMEOUT. nginx `gateway_timeout`: "
        "the app sent nothing for NGINX_PROXY_READ_TIMEOUT (a blocked event loop, or the two out of order)."
    ),
    505: error(
        "nginx `http_version_not_supported`: a request line naming HTTP/2.0 or above (HTTP/2 is chosen by "
        "ALPN over TLS, never named in a request line). An HTTP/0.9 request (no version) gets this body "
        "alone: HTTP/0.9 has no status line or headers."
    ),
}

INVALID: dict[str, Any] = {
    "description": "app `invalid_request`: the query or the body breaks the rules above, one problem each.",
    "content": {"application/json": {"schema": {"$ref": REF.format(model=InvalidRequest.__name__)}}},
}


def ndjson(line: type[BaseModel], description: str) -> dict[str, Any]:
    """A `responses=` entry for JSON lines, each a `line`: OpenAPI 3.2's `itemSchema`, which FastAPI
    writes for its own JSON Lines streams too."""
    return {"description": description, "content": {NDJSON: {"itemSchema": line.model_json_schema()}}}


def contract(openapi: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's schema with the 422 body the app sends in place of FastAPI's own; in place, idempotent."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for fastapis_own in ("HTTPValidationError", "ValidationError"):
        schemas.pop(fastapis_own, None)
    _, definitions = models_json_schema([(InvalidRequest, "serialization")], ref_template=REF)
    schemas.update(definitions["$defs"])
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            if "422" in operation.get("responses", {}):
                operation["responses"]["422"] = INVALID
    return openapi
