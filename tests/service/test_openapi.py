"""/openapi.json states what the wire carries: our error shape for every layer, the stream's media type, a
model for every body. `Contract` (tests/support/contract.py) validates real responses against it on the
real stack (tests/stack/test_contract.py)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from deploy.stackctl.config import ROOT
from service.platform import lifecycle
from service.settings import load_settings
from tests.service.test_app import served
from tests.support.contract import Contract

ERROR_STATUSES = {
    *("400", "404", "405", "413", "414", "421", "429", "431", "500", "501", "502", "503", "504", "505")
}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            yield from refs(child)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # Nothing answers on port 1: the rooms' backplane is down, as publishing's 503 needs.
    settings = load_settings(app_request_timeout=0.5, app_max_delay=2, redis_url="redis://127.0.0.1:1/0")
    with TestClient(served(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def contract(client: TestClient) -> Contract:
    return Contract(client.get("/openapi.json").json())


def test_fastapis_validation_error_is_gone_everywhere(contract: Contract) -> None:
    text = json.dumps(contract.document)
    assert "HTTPValidationError" not in text
    assert "ValidationError" not in contract.document["components"]["schemas"]


def test_every_ref_resolves_and_every_schema_is_valid_json_schema(contract: Contract) -> None:
    for ref in set(refs(contract.document)):
        assert ref.startswith("#/components/schemas/"), ref
        contract.lookup(ref[1:])
    for component in contract.document["components"]["schemas"].values():
        Draft202012Validator.check_schema(component)


def test_every_error_status_is_the_error_model(contract: Contract) -> None:
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, method in contract.operations():
        responses = contract.document["paths"][path][method]["responses"]
        errors = {status: r["content"] for status, r in responses.items() if int(status) >= 400}
        expected = {status: {"application/json": {"schema": ref}} for status in ERROR_STATUSES}
        if "422" in errors:
            expected["422"] = {
                "application/json": {"schema": {"$ref": "#/components/schemas/InvalidRequest"}}
            }
        assert errors == expected, f"{method} {path}"


def test_a_422_is_documented_where_the_route_reads_input(contract: Contract) -> None:
    for path, method in contract.operations():
        operation = contract.document["paths"][path][method]
        takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
        assert ("422" in operation["responses"]) == takes_input, f"{method} {path}"


def test_the_error_layers_are_the_ones_that_answer(contract: Contract) -> None:
    layer = contract.document["components"]["schemas"]["Layer"]
    assert set(layer["enum"]) == {"app", "uvicorn", "nginx"}
    invalid = contract.document["components"]["schemas"]["InvalidRequest"]
    problem = contract.lookup(invalid["properties"]["detail"]["items"]["$ref"][1:])
    assert set(problem["required"]) == {"location", "message", "type"}


def test_every_success_body_has_a_model(contract: Contract) -> None:
    for path, method in contract.operations():
        responses = contract.document["paths"][path][method]["responses"]
        (success,) = [status for status in responses if status.startswith("2")]
        assert success == ("202" if path == "/api/rooms/{room}/messages" else "200"), f"{method} {path}"
        content = responses[success]["content"]
        if path == "/api/stream":
            assert list(content) == ["application/x-ndjson"]
            assert content["application/x-ndjson"]["itemSchema"]["title"] == "StreamChunk"
        else:
            assert list(content) == ["application/json"], f"{method} {path}"
            assert content["application/json"]["schema"]["$ref"].startswith("#/components/schemas/")


def test_the_stream_sends_the_documented_media_type_line_by_line(
    client: TestClient, contract: Contract
) -> None:
    response = client.get("/api/stream", params={"chunks": 3, "interval": 0})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert [line["chunk"] for line in contract.check_response(response)] == [0, 1, 2]


def test_websocket_routes_are_named_outside_openapi(contract: Contract) -> None:
    assert not [path for path in contract.document["paths"] if path.startswith("/ws/")]
    assert "/ws/echo" in contract.document["info"]["description"]
    assert "/ws/ticker" in contract.document["info"]["description"]
    description = contract.document["info"]["description"]
    assert "/ws/rooms/{room}?after=<id>" in description
    for code in ("1003", "1008", "1009", "1011", "1012", "1013"):
        assert code in description, f"close code {code} is documented"


@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [
        ("GET", "/api/ping", None, 200),
        ("POST", "/api/echo", {"text": "hi"}, 200),
        ("GET", "/api/slow?delay=0", None, 200),
        ("GET", "/api/blocking?delay=0", None, 200),
        ("GET", "/api/sync?delay=0", None, 200),
        ("GET", "/api/cpu?work=10", None, 200),
        ("GET", "/api/info", None, 200),
        ("GET", "/api/slow?delay=1", None, 504),
        ("GET", "/api/slow?delay=3", None, 422),
        ("POST", "/api/echo", {"text": ""}, 422),
        ("GET", "/no/such/path", None, 404),
        ("GET", "/api/echo", None, 405),
        ("POST", "/api/rooms/lobby/messages", {"data": {"any": ["json"]}}, 503),
        ("POST", "/api/rooms/lobby/messages", {"data": "x" * 20_000}, 413),
        ("POST", "/api/rooms/no%20spaces/messages", {"data": 1}, 422),
        ("POST", "/api/rooms/" + "r" * 65 + "/messages", {"data": 1}, 422),
        ("POST", "/api/rooms/lobby/messages", {"text": "no data"}, 422),
    ],
)
def test_the_apps_own_answers_match_the_contract(
    client: TestClient, contract: Contract, method: str, url: str, body: Any, status: int
) -> None:
    response = client.request(method, url, json=body)
    assert response.status_code == status
    contract.check_response(response)


def test_the_platforms_paths_are_not_in_the_apps_document(contract: Contract) -> None:
    assert not set(contract.document["paths"]) & {"/healthz", "/readyz", "/metrics"}


def test_readyz_while_draining_matches_the_contract(client: TestClient, contract: Contract) -> None:
    """The platform's 503 is not in the app's document, and is the error every operation documents."""
    lifecycle.draining.set()
    try:
        response = client.get("/readyz")
    finally:
        lifecycle.draining.clear()
    assert response.status_code == 503
    assert contract.check_response(response)["error"] == "draining"


def test_uvicorns_over_capacity_body_is_an_error_body(contract: Contract) -> None:
    from service.platform.worker import json_service_unavailable

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(json_service_unavailable({}, None, send))
    start, body = sent
    content_type = dict(start["headers"])[b"content-type"].decode()
    assert (
        contract.check("GET", "/api/ping", start["status"], content_type, body["body"])["layer"] == "uvicorn"
    )


NGINX_PAGE = re.compile(r"return (\d{3}) '(\{.*\})\\n';")


def test_every_json_page_of_nginx_is_a_documented_error_body(contract: Contract) -> None:
    template = (ROOT / "deploy/nginx/nginx.conf.template").read_text()
    public_servers = "".join(template.split("server {")[1:3])  # default and named; the third: status port
    pages = NGINX_PAGE.findall(public_servers)
    for status, page in pages:
        body = json.loads(re.sub(r"\$\{?[A-Za-z_]+\}?", "x", page))  # nginx's variables and the knobs
        contract.validator("/components/schemas/ErrorBody").validate(body)
        assert (body["status"], body["layer"]) == (int(status), "nginx")
    # nginx never sends its 408 page: it closes the connection (test_contract.py shows it), and the
    # description of the API says so.
    assert {status for status, _ in pages} - ERROR_STATUSES == {"408"}
    assert "408" in contract.document["info"]["description"]


ERROR_PAGE = re.compile(r"^\s*error_page ([\d ]+?) (?:=(\d{3}) )?(\S+);$", re.MULTILINE)
EDGE_PAGE = re.compile(r"^\s*location = (/_edge/\d{3}) \{ internal; return (\d{3}) '", re.MULTILINE)
# What nginx answers before it knows the route (ngx_http_request.c: ngx_http_process_request_line,
# ngx_http_process_request_headers, ngx_http_process_request_header, ngx_http_process_request): a bad request
# line or header, 414, 494 (headers too large), 497 (plain HTTP to the HTTPS port), 501, 505, 405 (TRACE,
# CONNECT). The status server has no TLS listener, so no 497.
BEFORE_ROUTING = {400, 405, 414, 494, 497, 501, 505}


def test_every_error_page_of_nginx_is_an_internal_uri_with_its_own_status() -> None:
    """A named location (@name) fails for a request without a URI and nginx sends its HTML 500 instead."""
    template = (ROOT / "deploy/nginx/nginx.conf.template").read_text()
    default_server, public_server, status_server = template.split("server {")[1:]
    for server, before_routing in (
        (default_server, BEFORE_ROUTING),
        (public_server, BEFORE_ROUTING),
        (status_server, BEFORE_ROUTING - {497}),
    ):
        pages = dict(EDGE_PAGE.findall(server))
        intercepted = set()
        for codes, overwrite, target in ERROR_PAGE.findall(server):
            assert target in pages, f"error_page {codes} -> {target}: no internal location answers it"
            for code in codes.split():
                intercepted.add(int(code))
                assert pages[target] == (overwrite or code), f"error_page {code} -> {target}"
        assert intercepted >= before_routing, before_routing - intercepted
