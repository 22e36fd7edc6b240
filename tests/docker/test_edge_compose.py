"""The compose stack with NGINX_TLS=1, in a compose project of its own: HTTPS with the generated local CA
(the certificate and key mounted read-only), HTTP/2, the redirect, HSTS, wss://, demo routes turned off by
the container's renderer, the status port readable from the compose network, JSON errors for malformed
requests, and the compose Locust UI's target (HTTPS, the local CA trusted)."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import websocket
import yaml

from deploy.stackctl import docker as runtime
from deploy.stackctl import stack as stackctl
from deploy.stackctl.config import ROOT
from deploy.stackctl.errors import StackError
from deploy.stackctl.ports import free_port
from tests.support.contract import MALFORMED, Contract, exchange, refusal
from tests.support.docker import BUILD_TIMEOUT, DockerStack, docker, stack_environment, unavailable

pytestmark = pytest.mark.docker


@dataclass
class TlsProject:
    stack: DockerStack
    run_dir: Path

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.stack.env['HTTPS_PORT']}"

    @property
    def ca(self) -> Path:
        return self.run_dir / "tls" / "ca.pem"

    def trusted(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def tls_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsProject]:
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        unavailable(f"the docker CLI failed: {error}")
    if info.returncode != 0:
        unavailable(f"no Docker engine reachable ({(info.stderr.strip().splitlines() or ['?'])[-1]})")
    try:
        runtime.compose_command()
    except StackError as error:
        unavailable(str(error))
    env = stack_environment()
    env.update(NGINX_TLS="1", HTTPS_PORT=str(free_port()), NGINX_HSTS_MAX_AGE="60", APP_DEMO_ROUTES="0")
    project = TlsProject(DockerStack(env), tmp_path_factory.mktemp("docker-tls"))
    built = project.stack.stackctl("images", timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, f"building the images failed: {built.stderr[-3000:]}"
    try:
        project.stack.handle = stackctl.start("docker", run_dir=project.run_dir, base=env)
        yield project
    finally:
        project.stack.compose("down", "--remove-orphans", "--timeout", "5")


def test_compose_serves_https_with_http2_and_the_generated_ca(tls_project: TlsProject) -> None:
    response = httpx2.get(f"{tls_project.https}/api/ping", verify=tls_project.trusted())
    assert response.status_code == 200 and response.json()["pong"] is True
    assert response.headers["strict-transport-security"] == "max-age=60"
    assert response.headers["x-content-type-options"] == "nosniff"
    context = tls_project.trusted()
    context.set_alpn_protocols(["h2", "http/1.1"])
    port = int(tls_project.stack.env["HTTPS_PORT"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        assert connection.selected_alpn_protocol() == "h2"
    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx2.get(f"{tls_project.https}/api/ping", verify=ssl.create_default_context(), trust_env=False)


def test_the_published_plain_port_redirects_to_the_published_https_port(tls_project: TlsProject) -> None:
    redirect = httpx2.get(f"{tls_project.stack.url}/api/ping?x=1")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == f"{tls_project.https}/api/ping?x=1"
    assert "strict-transport-security" not in redirect.headers
    followed = httpx2.get(redirect.headers["location"], verify=tls_project.trusted())
    assert followed.status_code == 200


def test_wss_echo_through_the_nginx_container(tls_project: TlsProject) -> None:
    url = tls_project.https.replace("https://", "wss://") + "/ws/echo"
    ws = websocket.create_connection(url, timeout=10, sslopt={"ca_certs": str(tls_project.ca)})
    try:
        ws.send("tls in a container")
        assert ws.recv() == "tls in a container"
    finally:
        ws.close()


def test_demo_routes_are_turned_off_by_the_containers_renderer(tls_project: TlsProject) -> None:
    response = httpx2.get(f"{tls_project.https}/api/slow", params={"delay": 0}, verify=tls_project.trusted())
    assert response.status_code == 404
    assert response.json()["layer"] == "nginx"


def test_the_nginx_containers_json_errors_for_malformed_requests(tls_project: TlsProject) -> None:
    """Its nginx may be another version than the host's: the same refusals, over TLS, as documented."""
    contract = Contract(httpx2.get(f"{tls_project.https}/openapi.json", verify=tls_project.trusted()).json())
    port = int(tls_project.stack.env["HTTPS_PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        plain = b"GET /api/ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        refusal(contract, exchange(raw, plain), 400, "plain_http_to_https_port")
    for data, status, error in MALFORMED.values():
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            tls_project.trusted().wrap_socket(raw, server_hostname="localhost") as connection,
        ):
            refusal(contract, exchange(connection, data), status, error)


def test_certificate_and_key_are_mounted_read_only_and_only_nginx_publishes(tls_project: TlsProject) -> None:
    [nginx] = tls_project.stack.containers("nginx")
    mounts = {m["Destination"]: m for m in nginx["Mounts"]}
    for target, source in (
        (runtime.CONTAINER_TLS_CERT, tls_project.run_dir / "tls" / "cert.pem"),
        (runtime.CONTAINER_TLS_KEY, tls_project.run_dir / "tls" / "key.pem"),
    ):
        assert mounts[target]["Source"] == str(source)
        assert mounts[target]["RW"] is False
    write = tls_project.stack.exec(nginx, "sh", "-c", f"echo x >> {runtime.CONTAINER_TLS_KEY}")
    assert write.returncode != 0
    bindings = {port: hosts for port, hosts in nginx["NetworkSettings"]["Ports"].items() if hosts}
    assert bindings == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": tls_project.stack.env["HTTP_PORT"]}],
        f"{runtime.CONTAINER_HTTPS_PORT}/tcp": [
            {"HostIp": "127.0.0.1", "HostPort": tls_project.stack.env["HTTPS_PORT"]}
        ],
    }
    for app in tls_project.stack.containers("app"):
        assert not any(app["NetworkSettings"]["Ports"].values())


def test_the_compose_network_may_read_the_status_port(tls_project: TlsProject) -> None:
    [app] = tls_project.stack.containers("app")
    scrape = tls_project.stack.exec(
        app,
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://nginx:8081/stub_status').read().decode())",
    )
    assert scrape.returncode == 0, scrape.stderr
    assert scrape.stdout.startswith("Active connections")


def test_compose_and_the_overlay_agree_on_the_container_paths() -> None:
    services = yaml.safe_load(runtime.COMPOSE_FILE.read_text())["services"]
    nginx = services["nginx"]["environment"]
    assert nginx["NGINX_TLS_CERT"] == runtime.CONTAINER_TLS_CERT
    assert nginx["NGINX_TLS_KEY"] == runtime.CONTAINER_TLS_KEY
    assert nginx["NGINX_HTTPS_LISTEN_PORT"] == runtime.CONTAINER_HTTPS_PORT
    for locust in ("locust-master", "locust-worker"):
        assert services[locust]["environment"]["LOCUST_HOST"] == runtime.LOCUST_PLAIN_HOST
        assert "--host" not in services[locust]["command"]  # it would win over the overlay's LOCUST_HOST


def test_the_compose_locust_ui_target_follows_tls_and_refuses_a_certificate_of_your_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for knob in ("NGINX_TLS", "NGINX_TLS_CERT", "NGINX_TLS_KEY"):
        monkeypatch.delenv(knob, raising=False)
    assert stackctl.locust_target(tmp_path) == runtime.LOCUST_PLAIN_HOST
    monkeypatch.setenv("NGINX_TLS", "1")
    assert stackctl.locust_target(tmp_path) == runtime.LOCUST_TLS_HOST
    monkeypatch.setenv("NGINX_TLS_CERT", str(tmp_path / "mine.pem"))
    monkeypatch.setenv("NGINX_TLS_KEY", str(tmp_path / "mine.key"))
    with pytest.raises(
        StackError, match=r"^NGINX_TLS_CERT=\S+mine\.pem: the compose Locust UI verifies nginx"
    ):
        stackctl.locust_target(tmp_path)


# In a Locust container as the compose UI runs it: requests (HttpUser), Python's ssl (FastHttpUser) and
# websocket-client, each verifying; and without the mounted CA the same request fails verification.
LOCUST_PROBE = """
import os, ssl, urllib.request, requests, websocket
host = os.environ["LOCUST_HOST"]
print(requests.get(host + "/api/ping", timeout=10).json()["pong"])
print(urllib.request.urlopen(host + "/api/ping", timeout=10, context=ssl.create_default_context()).status)
ws = websocket.create_connection(host.replace("https", "wss") + "/ws/echo", timeout=10,
                                 sslopt={"ca_certs": os.environ["SSL_CERT_FILE"]})
ws.send("wss from locust")
print(ws.recv())
try:
    requests.get(host + "/api/ping", timeout=10, verify=requests.certs.where())
except requests.exceptions.SSLError as error:
    print("unverified:", "CERTIFICATE_VERIFY_FAILED" in str(error))
"""


def test_the_compose_locust_ui_targets_https_and_trusts_the_local_ca(tls_project: TlsProject) -> None:
    assert (
        stackctl.locust_target(tls_project.run_dir)
        == runtime.LOCUST_TLS_HOST
        == "https://nginx.localhost:8443"
    )
    handle = tls_project.stack.handle
    assert handle is not None
    project = runtime.Project(runtime.knob_environment(handle.config, handle.environ))
    command = project.command(
        "run", "--rm", "--no-deps", "--entrypoint", "python3", "locust-master", "-c", LOCUST_PROBE,
        profiles=runtime.ALL_PROFILES,
    )  # fmt: skip
    probe = subprocess.run(command, cwd=ROOT, env=project.env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split("\n")[-5:] == ["True", "200", "wss from locust", "unverified: True", ""], (
        probe.stdout
    )
