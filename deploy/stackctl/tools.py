"""The programs the stack and its experiments run that come from the OS, not from PyPI: where they are,
which version, and how to get them (installed with apt-get when we are root, else a one-line StackError)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.stackctl.errors import StackError

NGINX_PACKAGE = "nginx-light"
OPENSSL_PACKAGE = "openssl"
WRK_PACKAGE = "wrk"
REDIS_PACKAGE = "redis-server"
PROMETHEUS_PACKAGE = "prometheus"  # prometheus and promtool
EXPORTER_PACKAGE = "prometheus-nginx-exporter"
# Debian's name for nginx's exporter, and upstream's (its release binaries, Homebrew's formula).
EXPORTER_NAMES = ("prometheus-nginx-exporter", "nginx-prometheus-exporter")
HAPROXY_PACKAGE = "haproxy"
CADDY_PACKAGE = "caddy"
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/opt/homebrew/bin/nginx")
HAPROXY_PATHS = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/opt/homebrew/bin/haproxy")


def installed_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in NGINX_PATHS if Path(p).exists()), None)


@functools.cache
def nginx_version(nginx: str) -> tuple[int, ...]:
    said = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    found = re.search(r"nginx/([0-9.]+)", said)
    return tuple(int(part) for part in found.group(1).split(".")) if found else ()


def find_nginx() -> str:
    return find_tool("nginx", NGINX_PACKAGE, installed_nginx())


def find_openssl() -> str:
    """The openssl command (TLS: the local CA, certificate dates), from the OS like nginx."""
    return find_tool("openssl", OPENSSL_PACKAGE, shutil.which("openssl"))


def find_wrk() -> str:
    """The HTTP load generator of the drills, the bench and the loss tests, from the OS like nginx."""
    return find_tool("wrk", WRK_PACKAGE, shutil.which("wrk"))


def find_prometheus() -> str:
    """Prometheus for MONITORING=1 on the local runtime, from the OS like nginx."""
    return find_tool("prometheus", PROMETHEUS_PACKAGE, shutil.which("prometheus"))


def find_promtool() -> str:
    """Prometheus's checker (configs, rules and their unit tests); Debian ships it with prometheus."""
    return find_tool("promtool", PROMETHEUS_PACKAGE, shutil.which("promtool"))


def find_nginx_exporter() -> str:
    """nginx's Prometheus exporter (reads stub_status), from the OS like nginx."""
    found = next(filter(None, map(shutil.which, EXPORTER_NAMES)), None)
    return find_tool(EXPORTER_NAMES[0], EXPORTER_PACKAGE, found)


def find_redis_server() -> str:
    """The rooms' backplane of the local runtime (Debian's redis-server; Valkey's is a drop-in)."""
    return find_tool("redis-server", REDIS_PACKAGE, shutil.which("redis-server"))


def find_haproxy() -> str:
    """HAProxy, a front proxy `make bench` compares with nginx (deploy/stackctl/proxies.py)."""
    installed = shutil.which("haproxy") or next((p for p in HAPROXY_PATHS if Path(p).exists()), None)
    return find_tool("haproxy", HAPROXY_PACKAGE, installed)


def find_caddy() -> str:
    """Caddy, a front proxy `make bench` compares with nginx (deploy/stackctl/proxies.py)."""
    return find_tool("caddy", CADDY_PACKAGE, shutil.which("caddy"))


def find_tool(name: str, package: str, found: str | None) -> str:
    """`found`, else the OS package installed with apt-get when we are root, else the command to run."""
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"{name} not found: installing {package} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, env=env)
        if done.returncode == 0 and shutil.which(name):
            return str(shutil.which(name))
    if sys.platform == "darwin":
        raise StackError(f"{name} is not installed; install it with: brew install {name}")
    raise StackError(f"{name} is not installed; install it with: sudo apt-get install -y {package}")
