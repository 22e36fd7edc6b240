"""The URL a run targets and the CA its clients trust: for the stack of run_dir serving HTTPS
(NGINX_TLS=1), its https URL and the local CA; and what run_dir records of the stack a URL belongs to."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from deploy.stackctl import stack, tls
from deploy.stackctl.config import KNOBS
from loadtest.stack import started_stack
from service.settings import Settings, load_settings


def tls_target(host: str, run_dir: Path) -> tuple[str, Path | None]:
    """For the stack of run_dir serving HTTPS (NGINX_TLS=1): its https URL instead of its plain one (which
    only redirects, and a WebSocket handshake follows no redirect), and the local CA a client of it must
    trust (None for a certificate the system already trusts, or another host). Nothing goes unverified."""
    started = stack.recorded(run_dir)
    if started is None:
        return host, None
    settings = recorded_settings(started)
    if not settings.nginx_tls:
        return host, None
    https = tls.https_url(settings)
    plain = f"http://{tls.client_host(settings.nginx_listen_address)}:{settings.http_port}"
    if host.rstrip("/") == plain:
        host = https
    return host, tls.files(settings).ca if serves(host, https) else None


def serves(host: str, https_url: str) -> bool:
    return urlsplit(host).scheme == "https" and urlsplit(host).port == urlsplit(https_url).port


def our_stack(host: str, run_dir: Path) -> stack.Recorded | None:
    """What run_dir records of the stack it started, when `host` is its URL or its HTTPS URL."""
    plain, started = started_stack(host, run_dir), stack.recorded(run_dir)
    if plain is not None or started is None:
        return plain
    settings = recorded_settings(started)
    return started if settings.nginx_tls and serves(host, tls.https_url(settings)) else None


def recorded_settings(started: stack.Recorded) -> Settings:
    return load_settings(**{KNOBS[n]: v.value for n, v in started.values.items() if n in KNOBS})


def trust_env(ca: Path | None) -> dict[str, str]:
    """The environment that makes Python's ssl (Locust's FastHttpUser, websocket-client, urllib) and
    requests trust `ca`."""
    return {"SSL_CERT_FILE": str(ca), "REQUESTS_CA_BUNDLE": str(ca)} if ca else {}


@contextlib.contextmanager
def trusting(ca: Path | None) -> Iterator[None]:
    """This process's own requests (stack_info) trust `ca` for the block."""
    saved = {name: os.environ.get(name) for name in trust_env(ca)}
    os.environ.update(trust_env(ca))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
