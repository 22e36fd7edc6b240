"""The edge through the real nginx: TLS (the generated local CA, HTTP/2, the redirect, HSTS, wss://), where
nginx listens, who may read the status port, security headers, demo routes turned off, and `make check`
refusing unusable TLS inputs by knob."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest
import websocket

from deploy.stackctl import tls
from deploy.stackctl.config import NGINX_TEMPLATE, effective, nginx_variables, render_nginx
from deploy.stackctl.local import RunDir, pinned_paths
from deploy.stackctl.ports import free_port
from deploy.stackctl.tools import find_nginx, find_openssl
from tests.support.contract import MALFORMED, Contract, exchange, refusal
from tests.support.stack import Stack, make_stack, running

pytestmark = pytest.mark.stack

ENTRYPOINT = NGINX_TEMPLATE.parent / "entrypoint.sh"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
DEMO_ROUTES = ("/api/blocking", "/api/cpu", "/api/slow", "/api/sync")
HSTS_MAX_AGE = "600"
SIZES = (1 << 20) + 1, 2 << 20, 8 << 20  # oversized WebSocket messages: 1 MiB + 1, 2 MiB, 8 MiB


class TlsStack:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.https = f"https://127.0.0.1:{stack.env['HTTPS_PORT']}"
        self.ca = stack.run_dir / "tls" / "ca.pem"

    def trusted(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    """TLS with a generated certificate, HSTS on, demo routes off."""
    stack = make_stack(
        tmp_path_factory.mktemp("tls"),
        WEB_CONCURRENCY="1",
        NGINX_TLS="1",
        HTTPS_PORT=str(free_port()),
        NGINX_HSTS_MAX_AGE=HSTS_MAX_AGE,
        APP_DEMO_ROUTES="0",
    )
    with running(stack):
        yield TlsStack(stack)


@pytest.fixture(scope="module")
def plain_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The defaults (plain HTTP on 127.0.0.1, demo routes on), except that nginx keeps an idle upstream
    connection for 1 s only (see killed_in_flight)."""
    stack = make_stack(
        tmp_path_factory.mktemp("plain"), WEB_CONCURRENCY="1", NGINX_UPSTREAM_KEEPALIVE_TIMEOUT="1"
    )
    with running(stack):
        yield stack


# --- TLS ------------------------------------------------------------------------------------------------


def test_https_answers_when_the_generated_ca_is_trusted_and_only_then(tls_stack: TlsStack) -> None:
    for url in (tls_stack.https, tls_stack.https.replace("127.0.0.1", "localhost")):
        response = httpx2.get(f"{url}/api/ping", verify=tls_stack.trusted())
        assert response.status_code == 200
        assert response.json()["pong"] is True
    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx2.get(f"{tls_stack.https}/api/ping", verify=ssl.create_default_context(), trust_env=False)


def test_the_generated_ca_may_vouch_for_localhost_only(tls_stack: TlsStack) -> None:
    text = subprocess.run(
        [find_openssl(), "x509", "-in", str(tls_stack.ca), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "X509v3 Name Constraints: critical" in text
    assert "DNS:localhost" in text and "IP:127.0.0.0/255.0.0.0" in text
    key = tls_stack.stack.run_dir / "tls" / "ca.key"
    assert key.stat().st_mode & 0o077 == 0, "the CA key is readable by others"
    # Even signed with its key, a certificate for another name does not verify.
    openssl, where = find_openssl(), tls_stack.stack.run_dir / "tls"
    request = f"req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {where}/x.key -subj /CN=x"
    csr = subprocess.run([openssl, *request.split()], capture_output=True, check=True).stdout
    (where / "x.ext").write_text("subjectAltName = DNS:example.com\n")
    sign = f"x509 -req -CA {tls_stack.ca} -CAkey {key} -days 1 -extfile {where}/x.ext -out {where}/x.pem"
    subprocess.run([openssl, *sign.split()], input=csr, capture_output=True, check=True)
    verify = subprocess.run(
        [openssl, "verify", "-CAfile", str(tls_stack.ca), str(where / "x.pem")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode != 0 and "subtree violation" in verify.stdout + verify.stderr


def test_http2_is_negotiated_over_tls(tls_stack: TlsStack) -> None:
    context = tls_stack.trusted()
    context.set_alpn_protocols(["h2", "http/1.1"])
    port = int(tls_stack.https.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        assert connection.selected_alpn_protocol() == "h2"
        assert connection.version() in ("TLSv1.2", "TLSv1.3")
    curl = shutil.which("curl")
    assert curl, "curl (with HTTP/2) is needed for this test"
    version = subprocess.run(
        [curl, "-sS", "--http2", "--cacert", str(tls_stack.ca), "-o", "/dev/null",
         "-w", "%{http_version} %{response_code}", f"{tls_stack.https}/api/ping"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert version.stdout == "2 200", version.stderr


def test_tls_below_1_2_is_refused(tls_stack: TlsStack) -> None:
    context = tls_stack.trusted()
    with warnings.catch_warnings():  # TLS 1.1 is deprecated in Python too: this client offers it on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    port = int(tls_stack.https.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"),  # nginx's refusal
    ):
        context.wrap_socket(raw, server_hostname="localhost")


def test_plain_http_redirects_to_https_with_the_same_path(tls_stack: TlsStack) -> None:
    for method in ("GET", "POST"):
        response = httpx2.request(method, f"{tls_stack.stack.url}/api/echo?x=1&y=%20")
        assert response.status_code == 308
        assert response.headers["location"] == f"{tls_stack.https}/api/echo?x=1&y=%20"
    followed = httpx2.post(
        f"{tls_stack.stack.url}/api/echo",
        json={"text": "kept"},
        follow_redirects=True,
        verify=tls_stack.trusted(),
    )
    assert followed.status_code == 200 and followed.json()["text"] == "kept"


def test_hsts_is_sent_over_https_only(tls_stack: TlsStack) -> None:
    secure = httpx2.get(f"{tls_stack.https}/api/ping", verify=tls_stack.trusted())
    assert secure.headers["strict-transport-security"] == f"max-age={HSTS_MAX_AGE}"
    redirect = httpx2.get(f"{tls_stack.stack.url}/api/ping")
    assert redirect.status_code == 308
    assert "strict-transport-security" not in redirect.headers
    for name, value in SECURITY_HEADERS.items():
        assert redirect.headers[name] == value


def test_wss_echo_through_nginx_with_the_ca(tls_stack: TlsStack, tmp_path: Path) -> None:
    wss = tls_stack.https.replace("https://", "wss://")
    ws = websocket.create_connection(f"{wss}/ws/echo", timeout=5, sslopt={"ca_certs": str(tls_stack.ca)})
    try:
        ws.send("over tls")
        assert ws.recv() == "over tls"
    finally:
        ws.close()
    stranger, _ = certificate(tmp_path, "stranger")  # a client trusting another CA must refuse the stack
    with pytest.raises(ssl.SSLCertVerificationError):
        websocket.create_connection(f"{wss}/ws/echo", timeout=5, sslopt={"ca_certs": str(stranger)})


def test_demo_routes_are_nginxs_json_404_when_turned_off(tls_stack: TlsStack) -> None:
    with httpx2.Client(base_url=tls_stack.https, verify=tls_stack.trusted()) as client:
        for path in (*DEMO_ROUTES, "/api/slow/", "/api/%73low"):
            response = client.get(path, params={"delay": 0, "work": 1})
            assert response.status_code == 404, path
            body = response.json()
            assert body["layer"] == "nginx" and body["error"] == "not_found", path
            assert "APP_DEMO_ROUTES=0" in body["detail"]
            assert response.headers["x-frame-options"] == "DENY"
        assert client.get("/api/ping").status_code == 200
        assert client.get("/api/stream", params={"chunks": 2, "interval": 0}).status_code == 200


def test_demo_routes_are_served_by_default(plain_stack: Stack) -> None:
    for path in DEMO_ROUTES:
        response = httpx2.get(f"{plain_stack.url}{path}", params={"delay": 0, "work": 1})
        assert response.status_code == 200, path


def test_malformed_requests_get_nginxs_json_errors_on_both_ports(tls_stack: TlsStack) -> None:
    """Over TLS, plain HTTP to the HTTPS port, and on the plain port, which answers them instead of
    redirecting to HTTPS (there is no URL to redirect to)."""
    contract = Contract(httpx2.get(f"{tls_stack.https}/openapi.json", verify=tls_stack.trusted()).json())
    https_port, http_port = int(tls_stack.stack.env["HTTPS_PORT"]), int(tls_stack.stack.env["HTTP_PORT"])
    plain_request = b"GET /api/ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw:
        refusal(contract, exchange(raw, plain_request), 400, "plain_http_to_https_port")
    for case in ("request line", "header too long", "HTTP/9.9"):
        data, status, error = MALFORMED[case]
        with (
            socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw,
            tls_stack.trusted().wrap_socket(raw, server_hostname="localhost") as connection,
        ):
            refusal(contract, exchange(connection, data), status, error)
        with socket.create_connection(("127.0.0.1", http_port), timeout=5) as raw:
            refusal(contract, exchange(raw, data), status, error)


def test_a_malformed_http2_request_gets_nginxs_json_400(tls_stack: TlsStack) -> None:
    curl = shutil.which("curl")
    assert curl, "curl (with HTTP/2) is needed for this test"
    contract = Contract(httpx2.get(f"{tls_stack.https}/openapi.json", verify=tls_stack.trusted()).json())
    answer = subprocess.run(
        [curl, "-sS", "--http2", "--cacert", str(tls_stack.ca), "--request-target", "no-slash",
         "-w", "\n%{http_version} %{response_code} %{content_type}", f"{tls_stack.https}/"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    body, _, written = answer.stdout.rpartition("\n")
    assert written == "2 400 application/json", (answer.stdout, answer.stderr)
    refused = contract.check("GET", "*", 400, "application/json", body.encode())
    assert (refused["layer"], refused["error"]) == ("nginx", "bad_request")
    # Headers too large are no 431 over HTTP/2: nginx ends the connection (GOAWAY), as /openapi.json says.
    big = base64.b64encode(os.urandom(15000)).decode()  # random: HPACK's Huffman coding cannot shrink it
    ended = subprocess.run(
        [curl, "-sS", "--http2", "--cacert", str(tls_stack.ca), "-H", f"X-Big: {big}",
         "-w", "%{http_version} %{response_code}", f"{tls_stack.https}/api/ping"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    # No response (000); curl calls it a partial transfer (18) or, in other versions, an HTTP/2 error (16).
    assert ended.returncode in (16, 18) and ended.stdout.endswith(" 000"), (ended.stdout, ended.stderr)
    assert "GOAWAY" in contract.document["info"]["description"]


@pytest.mark.loadtest
def test_the_loadtest_runner_trusts_the_local_ca(tls_stack: TlsStack, tmp_path: Path) -> None:
    from loadtest.runner import run_headless
    from loadtest.runner.trust import tls_target

    host, ca = tls_target(tls_stack.stack.url, tls_stack.stack.run_dir)
    assert (host, ca) == (tls_stack.https, tls_stack.ca)
    summary = run_headless(
        tls_stack.stack.url, "websocket", 2, 2, "3s", tmp_path / "report", run_dir=tls_stack.stack.run_dir
    )
    assert summary.host == tls_stack.https
    assert summary.failures == 0 and summary.requests > 0, summary.errors
    assert summary.row("WS", "/ws/echo round-trip"), summary.rows


# --- security headers, listen address, status port -----------------------------------------------------


def test_security_headers_on_200_404_and_502(plain_stack: Stack) -> None:
    ok = httpx2.get(f"{plain_stack.url}/api/ping")
    missing = httpx2.get(f"{plain_stack.url}/metrics")  # nginx's own JSON 404
    unknown = httpx2.get(f"{plain_stack.url}/no/such/route")  # the app's 404, through nginx
    bad_gateway = killed_in_flight(plain_stack)
    for response, status in ((ok, 200), (missing, 404), (unknown, 404), (bad_gateway, 502)):
        assert response.status_code == status, response.text
        assert_security_headers(response)
    assert bad_gateway.json()["layer"] == "nginx"


def killed_in_flight(stack: Stack) -> httpx2.Response:
    """A request whose worker is SIGKILLed while it waits: nginx answers 502. It must travel on a fresh
    upstream connection: nginx retries an idempotent request that failed on a pooled one, and gunicorn's
    next worker would answer it."""
    assert stack.handle is not None
    time.sleep(1.5)  # NGINX_UPSTREAM_KEEPALIVE_TIMEOUT=1: the pool is empty now
    result: list[httpx2.Response] = []
    thread = threading.Thread(
        target=lambda: result.append(httpx2.get(f"{stack.url}/api/slow", params={"delay": 10}, timeout=30))
    )
    thread.start()
    time.sleep(0.5)
    for pid in stack.handle.worker_pids():
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=30)
    deadline = time.monotonic() + 30  # until gunicorn's next worker answers
    while httpx2.get(f"{stack.url}/healthz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    return result[0]


def assert_security_headers(response: httpx2.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.status_code, name)
    assert "strict-transport-security" not in response.headers  # plain HTTP


def other_addresses() -> list[str]:
    """IPv4 addresses of this host that nginx must not answer on: 127.0.0.2 and every non-loopback one."""
    found = {
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not address.address.startswith("127.")
    }
    return ["127.0.0.2", *sorted(found)]


def refused(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) != 0


def test_nginx_listens_only_on_the_configured_address(plain_stack: Stack) -> None:
    port = int(plain_stack.env["HTTP_PORT"])
    rendered = (plain_stack.run_dir / "nginx.conf").read_text()
    assert f"listen 127.0.0.1:{port} " in rendered
    assert f"listen 127.0.0.1:{plain_stack.env['NGINX_STATUS_PORT']};" in rendered
    assert plain_stack.handle is not None
    nginx = psutil.Process(plain_stack.handle.pids()["nginx"])
    listening = {(c.laddr.ip, c.laddr.port) for c in nginx.net_connections("inet") if c.status == "LISTEN"}
    assert ("127.0.0.1", port) in listening
    assert all(ip == "127.0.0.1" for ip, _ in listening), listening
    assert not refused("127.0.0.1", port)
    for address in other_addresses():
        assert refused(address, port), f"nginx answers on {address}:{port}"


def status_from(source: str, port: int, path: str = "/stub_status") -> tuple[int, str]:
    """GET on the status port from a chosen local source address (all of 127.0.0.0/8 is this host)."""
    with socket.socket() as client:
        client.settimeout(5)
        client.bind((source, 0))
        client.connect(("127.0.0.1", port))
        client.sendall(f"GET {path} HTTP/1.0\r\nHost: status\r\n\r\n".encode())
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def test_the_status_port_answers_loopback_only_by_client_address(plain_stack: Stack) -> None:
    port = int(plain_stack.env["NGINX_STATUS_PORT"])
    rendered = (plain_stack.run_dir / "nginx.conf").read_text()
    assert "allow 127.0.0.1;" in rendered and "deny all;" in rendered
    status, body = status_from("127.0.0.1", port)
    assert status == 200 and body.startswith("Active connections")
    for path in ("/stub_status", "/metrics"):
        status, body = status_from("127.0.0.2", port, path)
        assert status == 403, body
        assert '"layer":"nginx"' in body and "NGINX_STATUS_ALLOW" in body


def test_the_status_port_answers_malformed_requests_with_json_too(plain_stack: Stack) -> None:
    port = int(plain_stack.env["NGINX_STATUS_PORT"])
    for data, status, error in (
        (MALFORMED["request line"][0], 400, "bad_request"),
        (MALFORMED["HTTP/9.9"][0], 505, "http_version_not_supported"),
        (b"TRACE /stub_status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
        (b"GET /_edge/400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            head, _, body = exchange(raw, data).partition(b"\r\n\r\n")
        assert head.split()[1] == str(status).encode() and b"Content-Type: application/json" in head, head
        answer = json.loads(body)
        assert (answer["status"], answer["error"], answer["layer"]) == (status, error, "nginx")


# --- make check: unusable TLS inputs, named by knob ------------------------------------------------------


def certificate(where: Path, name: str, *, expired: bool = False, days: int = 90) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key; `expired`: valid only in January 2020."""
    openssl = find_openssl()
    where.mkdir(parents=True, exist_ok=True)
    cert, key = where / f"{name}.pem", where / f"{name}.key"
    new = [
        openssl,
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
    ]
    if not expired:
        subprocess.run(
            [*new, "-x509", "-days", str(days), "-keyout", key, "-out", cert], check=True, capture_output=True
        )
        return cert, key
    # `openssl req` cannot backdate; `openssl ca` can, with a minimal database.
    (where / "index.txt").write_text("")
    (where / "serial").write_text("01\n")
    (where / "ca.cnf").write_text(
        "[ca]\ndefault_ca = x\n[x]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n"
    )
    subprocess.run([*new, "-keyout", key, "-out", where / "request.csr"], check=True, capture_output=True)
    subprocess.run(
        [openssl, "ca", "-batch", "-notext", "-config", "ca.cnf", "-selfsign", "-keyfile", key,
         "-in", "request.csr", "-out", cert, "-startdate", "20200101000000Z", "-enddate", "20200201000000Z"],
        check=True, capture_output=True, cwd=where,
    )  # fmt: skip
    return cert, key


def tls_check(tmp_path: Path, cert: Path, key: Path) -> subprocess.CompletedProcess[str]:
    stack = make_stack(tmp_path / "run", NGINX_TLS="1", NGINX_TLS_CERT=str(cert), NGINX_TLS_KEY=str(key))
    return stack.stackctl("check")


def tls_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if " tls (" in line]


def test_check_refuses_an_expired_certificate_naming_the_knob(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, "old", expired=True)
    result = tls_check(tmp_path, cert, key)
    assert result.returncode == 1, result.stdout
    assert tls_lines(result) == [f"✗ error tls (expiry): NGINX_TLS_CERT={cert}: expired on 2020-02-01"]
    assert "1 TLS input(s) unusable" in result.stdout.splitlines()[-1]
    up = make_stack(tmp_path / "up", NGINX_TLS="1", NGINX_TLS_CERT=str(cert), NGINX_TLS_KEY=str(key))
    started = up.stackctl("up")
    assert started.returncode == 1
    assert started.stderr.strip().splitlines() == [
        f"stackctl up: NGINX_TLS_CERT={cert}: expired on 2020-02-01; renew the certificate"
    ]
    assert refused("127.0.0.1", int(up.env["HTTP_PORT"])), "up started nginx anyway"


def test_check_refuses_a_key_of_another_certificate_naming_both_knobs(tmp_path: Path) -> None:
    cert, _ = certificate(tmp_path, "one")
    _, other_key = certificate(tmp_path, "two")
    result = tls_check(tmp_path, cert, other_key)
    assert result.returncode == 1
    assert tls_lines(result) == [
        f"✗ error tls (key): NGINX_TLS_KEY={other_key} and NGINX_TLS_CERT={cert}: "
        "the key does not belong to the certificate"
    ]


def test_under_30_days_left_is_a_warning_and_an_unreadable_file_an_error(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, "soon", days=10)
    nope = tmp_path / "nope.key"
    for given_key, severity, claim in (
        (key, "warning", f"NGINX_TLS_CERT={cert}: expires on "),
        (nope, "error", f"NGINX_TLS_KEY={nope}: cannot read it (No such file or directory)"),
    ):
        knobs = {"NGINX_TLS": "1", "NGINX_TLS_CERT": str(cert), "NGINX_TLS_KEY": str(given_key)}
        [finding] = tls.findings(effective(knobs, None).settings, find_openssl())
        assert (finding.severity, finding.claim[: len(claim)]) == (severity, claim)


def chain(where: Path) -> tuple[Path, Path, Path]:
    """A root CA, an intermediate it signed and a leaf for localhost the intermediate signed: the leaf alone,
    the leaf followed by the intermediate (a full chain), and the leaf's key."""
    openssl = find_openssl()
    where.mkdir(parents=True, exist_ok=True)
    (where / "ext.cnf").write_text(
        "[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n"
        "[leaf]\nsubjectAltName = DNS:localhost\nbasicConstraints = critical,CA:FALSE\n"
    )
    new = "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"

    def run(command: str) -> None:
        subprocess.run([openssl, *command.split()], cwd=where, check=True, capture_output=True)

    run(f"{new} -x509 -days 90 -subj /CN=root -keyout root.key -out root.pem -extensions ca -config ext.cnf")
    for name, issuer, extensions in (("mid", "root", "ca"), ("leaf", "mid", "leaf")):
        run(f"{new} -subj /CN={name} -keyout {name}.key -out {name}.csr")
        run(
            f"x509 -req -in {name}.csr -CA {issuer}.pem -CAkey {issuer}.key -days 90 -set_serial 1 "
            f"-extfile ext.cnf -extensions {extensions} -out {name}.pem"
        )
    (where / "full.pem").write_text((where / "leaf.pem").read_text() + (where / "mid.pem").read_text())
    return where / "leaf.pem", where / "full.pem", where / "leaf.key"


def test_check_says_when_a_certificate_file_lacks_its_leafs_issuer(tmp_path: Path) -> None:
    leaf, full, key = chain(tmp_path / "chain")
    findings = {}
    for cert in (leaf, full):
        knobs = {"NGINX_TLS": "1", "NGINX_TLS_CERT": str(cert), "NGINX_TLS_KEY": str(key)}
        findings[cert] = tls.findings(effective(knobs, None).settings, find_openssl())
    [_, missing] = findings[leaf]
    assert (missing.rule, missing.severity) == ("tls (chain)", "warning")
    assert (
        missing.claim == f"NGINX_TLS_CERT={leaf}: holds the certificate of CN=leaf but not its issuer CN=mid"
    )
    assert [f.severity for f in findings[full]] == ["ok"], findings[full]
    stapled = {
        "NGINX_TLS": "1",
        "NGINX_TLS_CERT": str(leaf),
        "NGINX_TLS_KEY": str(key),
        "NGINX_OCSP_STAPLING": "1",
    }
    [_, refused] = tls.findings(effective(stapled, None).settings, find_openssl())
    assert (refused.rule, refused.severity) == ("tls (chain)", "error")


def test_ocsp_stapling_is_refused_with_the_generated_ca(tmp_path: Path) -> None:
    up = make_stack(tmp_path / "up", NGINX_TLS="1", NGINX_OCSP_STAPLING="1")
    started = up.stackctl("up")
    assert started.returncode == 1
    assert "NGINX_OCSP_STAPLING=1 with NGINX_TLS_CERT empty" in started.stderr, started.stderr
    assert refused("127.0.0.1", int(up.env["HTTP_PORT"])), "up started nginx anyway"


# --- both renderers ---------------------------------------------------------------------------------------


def test_the_container_entrypoint_renders_what_stackctl_renders(tmp_path: Path) -> None:
    knobs = {"NGINX_TLS": "1", "APP_DEMO_ROUTES": "0", "NGINX_UPSTREAM": "127.0.0.1:8000"}
    config = effective(
        {**knobs, "NGINX_ERROR_LOG": str(tmp_path / "e.log")}, None, pinned_paths(RunDir(tmp_path))
    )
    tls.ensure(config.settings, find_openssl())  # nginx -t loads the certificate
    env = {**os.environ, **nginx_variables(config.settings), **knobs, "NGINX_TEMPLATE": str(NGINX_TEMPLATE)}
    env["PATH"] = os.pathsep.join([str(Path(find_nginx()).parent), env["PATH"]])
    subprocess.run(["sh", str(ENTRYPOINT), "reload"], env=env, capture_output=True, text=True, timeout=30)
    rendered = Path(config.settings.nginx_run_dir, "nginx.conf").read_text()
    assert rendered == render_nginx(config.settings)
    assert (
        "ssl_certificate " in rendered
        and "return 308 https://" in rendered
        and "APP_DEMO_ROUTES=0" in rendered
    )


# --- Host, HTTP/0.9, WebSockets and HTTP/2 through nginx (raw sockets, TLS included) ----------------------


def over_tls(stack: TlsStack, data: bytes, server_name: str = "localhost") -> bytes:
    port = int(stack.https.rsplit(":", 1)[1])
    context = stack.trusted()
    context.check_hostname = server_name == "localhost"  # another name: the certificate is still ours
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as connection,
    ):
        return exchange(connection, data)


def over_plain(port: int | str, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        return exchange(raw, data)


def test_another_host_gets_nginxs_json_421_on_both_ports_and_never_the_app(tls_stack: TlsStack) -> None:
    contract = Contract(httpx2.get(f"{tls_stack.https}/openapi.json", verify=tls_stack.trusted()).json())
    evil = b"GET /api/ping/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    absolute = b"GET http://evil.example/api/ping/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    plain_port = tls_stack.stack.env["HTTP_PORT"]
    for received in (
        over_plain(plain_port, evil),  # the plain port: no redirect to https://evil.example
        over_plain(plain_port, absolute),
        over_tls(tls_stack, evil),  # SNI localhost, Host evil.example
        over_tls(tls_stack, evil, server_name="evil.example"),
    ):
        refusal(contract, received, 421, "misdirected_request")
        assert b"location" not in received.lower()
    with httpx2.Client(verify=tls_stack.trusted(), http2=False) as client:  # HTTP/2 is curl's, below
        assert client.get(f"{tls_stack.https}/api/ping", headers={"Host": "localhost"}).status_code == 200
    logged = [line for line in access_lines(tls_stack.stack) if line["host"] == "evil.example"]
    assert logged and {line["status"] for line in logged} == {421}
    assert all(line["upstream_addr"] == "" for line in logged), "the app was asked"


def test_redirects_keep_the_port_and_the_app_sees_host_and_scheme(tls_stack: TlsStack) -> None:
    """Starlette's trailing-slash redirect is built from Host and X-Forwarded-Proto: with the port the
    client used, over HTTP/1.1 and HTTP/2; the plain port's 308 names the HTTPS port."""
    port = tls_stack.https.rsplit(":", 1)[1]
    for name in ("localhost", "127.0.0.1"):
        response = httpx2.get(f"https://{name}:{port}/api/ping/", verify=tls_stack.trusted())
        assert (response.status_code, response.headers["location"]) == (
            307,
            f"https://{name}:{port}/api/ping",
        )
    curl = shutil.which("curl")
    assert curl, "curl (with HTTP/2) is needed for this test"
    h2 = subprocess.run(
        [curl, "-sS", "--http2", "--cacert", str(tls_stack.ca), "-o", "/dev/null",
         "-w", "%{http_version} %{response_code} %{redirect_url}", f"https://localhost:{port}/api/ping/"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert h2.stdout == f"2 307 https://localhost:{port}/api/ping", h2.stderr
    redirect = httpx2.get(f"http://localhost:{tls_stack.stack.env['HTTP_PORT']}/api/ping/")
    assert redirect.headers["location"] == f"https://localhost:{port}/api/ping/"


def test_http09_is_refused_on_both_ports_without_reaching_the_app(tls_stack: TlsStack) -> None:
    """HTTP/0.9 has no status line or headers, so the refusal is the JSON 505 body alone."""
    for received in (
        over_plain(tls_stack.stack.env["HTTP_PORT"], b"GET /api/ping\r\n\r\n"),
        over_tls(tls_stack, b"GET /api/ping\r\n\r\n"),
    ):
        body = json.loads(received)
        assert (body["status"], body["error"], body["layer"]) == (505, "http_version_not_supported", "nginx")
        assert b"pong" not in received
    logged = [x for x in access_lines(tls_stack.stack) if x["protocol"] == "" and x["uri"] == "/api/ping"]
    assert len(logged) >= 2 and {line["status"] for line in logged} == {505}
    assert all(line["upstream_addr"] == "" for line in logged)


def test_http2_with_an_upgrade_header_reaches_the_app_as_a_plain_get(tls_stack: TlsStack) -> None:
    curl = shutil.which("curl")
    assert curl, "curl (with HTTP/2) is needed for this test"
    answer = subprocess.run(
        [curl, "-sS", "--http2", "--cacert", str(tls_stack.ca), "-H", "upgrade: websocket",
         "-w", "\n%{http_version} %{response_code}", f"{tls_stack.https}/ws/echo"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    body, _, written = answer.stdout.rpartition("\n")
    assert written == "2 404", (answer.stdout, answer.stderr)  # no HTTP route /ws/echo: the app's JSON 404
    assert json.loads(body)["layer"] == "app"
    time.sleep(0.5)
    errors = (tls_stack.stack.run_dir / "nginx-error.log").read_text()
    assert "epoll_ctl" not in errors and "[alert]" not in errors, errors[-2000:]


HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_a_refused_websocket_handshake_gets_json_naming_the_app(plain_stack: Stack) -> None:
    for path, status, error in (
        ("/ws/nope", 404, "not_found"),
        ("/api/ping", 404, "not_found"),  # an HTTP route, no WebSocket route
        ("/ws/ticker?interval=-1", 422, "invalid_request"),
    ):
        with socket.create_connection(("127.0.0.1", int(plain_stack.env["HTTP_PORT"])), timeout=10) as raw:
            raw.sendall(HANDSHAKE.format(path=path).encode())
            head, _, body = raw.recv(65536).partition(b"\r\n\r\n")
        assert head.split()[1] == str(status).encode() and b"Content-Type: application/json" in head, head
        answer = json.loads(body[: int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])])
        assert (answer["status"], answer["error"], answer["layer"]) == (status, error, "app"), answer


def close_code(url: str, size: int, sslopt: dict[str, str] | None = None) -> int | str:
    """Sends one binary message of `size` bytes and returns the close code the server sent, or why none
    came (1006: the connection ended without a close frame)."""
    ws = websocket.create_connection(url, timeout=15, sslopt=sslopt)
    try:
        ws.send_binary(b"x" * size)
        opcode, frame = ws.recv_data_frame(True)
        return (
            int.from_bytes(frame.data[:2], "big") if opcode == websocket.ABNF.OPCODE_CLOSE else f"op {opcode}"
        )
    except (websocket.WebSocketException, OSError) as error:
        return f"1006 ({type(error).__name__})"
    finally:
        ws.shutdown()


def test_a_message_over_the_limit_is_1009_through_nginx_every_time(plain_stack: Stack) -> None:
    """UVICORN_WS_MAX_SIZE=1 MiB (the default): the app's close frame must reach the client before the
    connection ends, however much of the message is still on its way."""
    seen = {
        size: Counter(close_code(f"{plain_stack.ws_url}/ws/echo", size) for _ in range(10)) for size in SIZES
    }
    assert all(counts == Counter({1009: 10}) for counts in seen.values()), seen


def test_a_message_over_the_limit_is_1009_over_wss_too(tls_stack: TlsStack) -> None:
    wss = tls_stack.https.replace("https://", "wss://")
    codes = Counter(close_code(f"{wss}/ws/echo", 8 << 20, {"ca_certs": str(tls_stack.ca)}) for _ in range(5))
    assert codes == Counter({1009: 5}), codes


def test_the_limit_is_the_message_with_permessage_deflate(plain_stack: Stack) -> None:
    """Random bytes grow when deflated: a message at the limit still passes, one byte more is 1009."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    limit = 1 << 20
    with connect(f"{plain_stack.ws_url}/ws/echo", compression="deflate", max_size=None) as ws:
        assert ws.protocol.extensions, "permessage-deflate was not negotiated"
        at_limit = os.urandom(limit)
        ws.send(at_limit)
        assert ws.recv(timeout=15) == at_limit
        ws.send(os.urandom(limit + 1))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# --- the Swagger UI and the demo routes ---------------------------------------------------------------------


def test_the_swagger_ui_loads_nothing_from_another_origin(plain_stack: Stack) -> None:
    page = httpx2.get(f"{plain_stack.url}/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "https://" not in page.text and "http://" not in page.text, "a third-party URL on /docs"
    for name, media_type in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        asset = httpx2.get(f"{plain_stack.url}/docs/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert len(asset.content) > 10_000
    assert httpx2.get(f"{plain_stack.url}/docs/assets/..%2Fcore.py").status_code == 404


def test_info_and_docs_are_off_with_demo_routes_off(tls_stack: TlsStack) -> None:
    with httpx2.Client(base_url=tls_stack.https, verify=tls_stack.trusted()) as client:
        for path in ("/api/info", "/docs", "/docs/assets/swagger-ui.css"):
            response = client.get(path)
            assert response.status_code == 404 and response.json()["layer"] == "nginx", path
        assert client.get("/openapi.json").status_code == 200


# --- last: every access line nginx wrote during these tests is JSON ------------------------------------


def access_lines(stack: Stack) -> list[dict[str, Any]]:
    time.sleep(1.2)  # nginx writes its access log buffered, at most 1 s late (flush=1s)
    text = "".join(path.read_text() for path in sorted(stack.run_dir.glob("nginx.log*"), reverse=True))
    return [json.loads(line) for line in text.splitlines()]


def test_zz_every_access_line_of_these_tests_is_json(plain_stack: Stack, tls_stack: TlsStack) -> None:
    """Runs last in this file: every line both stacks' nginx wrote parses, the malformed requests', the
    refused hosts' and HTTP/0.9's included, and a request that ended without a response (the HTTP/2
    headers too large: status 000) is logged with status null. nginx's error lines are in their own file."""
    lines = access_lines(plain_stack) + access_lines(tls_stack.stack)
    assert len(lines) > 50
    statuses = {line["status"] for line in lines}
    assert None in statuses and {421, 505, 400, 431} <= statuses, statuses
    assert all(isinstance(line["status"], int | None) for line in lines)
    for stack in (plain_stack, tls_stack.stack):
        errors = (stack.run_dir / "nginx-error.log").read_text().splitlines()
        assert all(not line.startswith("{") for line in errors)
