"""The OpenAPI contract as a validator of real answers (`Contract`), and nginx's refusals of malformed
requests: the raw requests (`MALFORMED`), sending them (`exchange`) and checking the answer (`refusal`).
The service tier checks the document itself; the stack and docker tiers check what the wire carries."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

URI = "urn:blueprint:openapi"


def escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class Contract:
    """An OpenAPI 3.1 document as a validator of responses; its schemas are JSON Schema 2020-12, `$ref`s
    resolved within the document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(URI, resource)

    def lookup(self, pointer: str) -> Any:
        return self.registry.resolver().lookup(f"{URI}#{pointer}").contents

    def operations(self) -> Iterator[tuple[str, str]]:
        for path, item in self.document["paths"].items():
            for method in item:
                yield path, method

    def template_of(self, path: str) -> str:
        """The document's path that `path` is an instance of (`/api/rooms/{room}/messages`), else `path`."""
        for template in self.document["paths"]:
            parts = re.split(r"\{[^/}]+\}", template)
            if len(parts) > 1 and re.fullmatch("[^/]+".join(map(re.escape, parts)), path):
                return template
        return path

    def response_pointer(self, method: str, path: str, status: int) -> str:
        """Where the document describes this answer. A request no operation describes (an unknown path,
        another method) must get what every operation documents for that status."""
        method = method.lower()
        path = self.template_of(path)
        known = method in self.document["paths"].get(path, {})
        candidates = [(path, method)] if known else list(self.operations())
        for p, m in candidates:
            assert str(status) in self.lookup(f"/paths/{escape(p)}/{m}/responses"), f"{m} {p}: no {status}"
        pointers = [f"/paths/{escape(p)}/{m}/responses/{status}" for p, m in candidates]
        contents = {json.dumps(self.lookup(pointer)["content"], sort_keys=True) for pointer in pointers}
        assert len(contents) == 1, f"{method} {path}: operations disagree on {status}"
        return pointers[0]

    def validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{URI}#{pointer}"}, registry=self.registry)

    def check(self, method: str, path: str, status: int, content_type: str, body: bytes) -> Any:
        """The body's JSON value, or its lines' for a stream (`itemSchema`), valid as documented."""
        pointer = self.response_pointer(method, path, status)
        media_type = content_type.split(";")[0].strip()
        content = self.lookup(pointer)["content"]
        assert media_type in content, f"{method} {path} {status}: {media_type} is not in {list(content)}"
        pointer = f"{pointer}/content/{escape(media_type)}"
        if "itemSchema" in content[media_type]:
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            for line in lines:
                self.validator(f"{pointer}/itemSchema").validate(line)
            return lines
        value = json.loads(body)
        self.validator(f"{pointer}/schema").validate(value)
        return value

    def check_response(self, response: Any) -> Any:
        """`check` for an httpx2 or TestClient response."""
        content_type = response.headers.get("content-type", "")
        request = response.request
        return self.check(
            request.method, request.url.path, response.status_code, content_type, response.content
        )


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def refusal(contract: Contract, received: bytes, status: int, error: str) -> dict[str, Any]:
    """nginx's answer to a request it refused before routing: this status, JSON, as every operation
    documents it (the request may name no route at all), and the X-Request-ID header in the body too."""
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in header_lines)}
    assert int(status_line.split()[1]) == status, received[:300]
    assert headers["content-type"] == "application/json", received[:300]
    refused = contract.check("GET", "*", status, headers["content-type"], body)
    assert (refused["layer"], refused["error"]) == ("nginx", error)
    assert refused["request_id"] == headers["x-request-id"]
    return refused


TOO_LONG = b"a" * 9000  # above one of nginx's large_client_header_buffers (8k)
# Requests nginx refuses before it knows the route. Without a URI (a request line it cannot parse, 414, 505)
# an error_page to a named location fails and nginx sends its built-in HTML 500 instead.
MALFORMED = {
    "request line": (b"G@T /api/ping HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "TLS to the plain port": (
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),
        400,
        "bad_request",
    ),
    "percent-encoding": (b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "no Host": (b"GET /api/ping HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "bad_request"),
    "URI too long": (b"GET /api/ping?" + TOO_LONG + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    "header too long": (
        b"GET /api/ping HTTP/1.1\r\nHost: x\r\nX-Long: " + TOO_LONG + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "Transfer-Encoding": (
        b"POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        "not_implemented",
    ),
    "HTTP/9.9": (b"GET /api/ping HTTP/9.9\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
}
