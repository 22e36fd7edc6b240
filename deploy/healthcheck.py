"""Container healthcheck, standard library only (no curl in slim images): exit 0 when healthy.

python deploy/healthcheck.py                      the app: APP_READINESS_PATH (/readyz) on GUNICORN_BIND's
                                                  port or unix socket
                                                  (503 while draining on shutdown, so a stopping app turns
                                                  unhealthy)
python deploy/healthcheck.py http://HOST:PORT/P   any URL that must answer 2xx (the Locust web UI)
python deploy/healthcheck.py tcp://HOST:PORT      a port that must accept connections (Locust master)
python deploy/healthcheck.py unix:/PATH           APP_READINESS_PATH on a unix socket
"""

import http.client
import os
import socket
import sys
import urllib.request
from urllib.parse import urlsplit

READINESS = os.environ.get("APP_READINESS_PATH") or "/readyz"


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (GUNICORN_BIND=unix:/path), standard library only."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def app_target() -> str:
    """The app's readiness: an http:// URL on GUNICORN_BIND's port, or `unix:/path` of its socket."""
    bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
    return bind if bind.startswith("unix:") else f"http://127.0.0.1:{bind.rsplit(':', 1)[1]}{READINESS}"


def unix_ready(path: str) -> bool:
    connection = UnixConnection(path, timeout=3)
    try:
        connection.request("GET", READINESS)
        answered: int = connection.getresponse().status
    finally:
        connection.close()
    return 200 <= answered < 300


def healthy(target: str) -> bool:
    parts = urlsplit(target)
    try:
        if parts.scheme == "unix":
            return unix_ready(target.removeprefix("unix:"))
        if parts.scheme == "tcp":
            socket.create_connection((parts.hostname, parts.port), timeout=3).close()
            return True
        with urllib.request.urlopen(target, timeout=3) as response:
            status: int = response.status
            return 200 <= status < 300
    except OSError as error:
        print(f"healthcheck: {target}: {error}", file=sys.stderr)
        return False


if __name__ == "__main__":
    sys.exit(0 if healthy(sys.argv[1] if len(sys.argv) > 1 else app_target()) else 1)
