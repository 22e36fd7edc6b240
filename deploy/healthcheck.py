"""Container healthcheck, standard library only (no curl in slim images): exit 0 when healthy.

python deploy/healthcheck.py                      the app: APP_READINESS_PATH (/readyz) on GUNICORN_BIND's
                                                  port (503 while draining on shutdown, so a stopping app
                                                  turns unhealthy)
python deploy/healthcheck.py http://HOST:PORT/P   any URL that must answer 2xx (the Locust web UI)
python deploy/healthcheck.py tcp://HOST:PORT      a port that must accept connections (Locust master)
"""

import os
import socket
import sys
import urllib.request
from urllib.parse import urlsplit


def app_url() -> str:
    port = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").rsplit(":", 1)[1]
    return f"http://127.0.0.1:{port}{os.environ.get('APP_READINESS_PATH') or '/readyz'}"


def healthy(target: str) -> bool:
    parts = urlsplit(target)
    try:
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
    sys.exit(0 if healthy(sys.argv[1] if len(sys.argv) > 1 else app_url()) else 1)
