"""Where the stack under test is: its URL and the settings it runs with. No Locust imports here."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deploy.stackctl import stack
from deploy.stackctl.ports import LOOPBACK
from loadtest.errors import LoadtestError
from service.settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_DIR = ROOT / ".run" / "local"


def default_host(run_dir: Path = DEFAULT_RUN_DIR) -> str:
    """The URL of the stack started in run_dir, else 127.0.0.1 on the effective HTTP_PORT."""
    started = stack.recorded(run_dir)
    if started is not None:
        return started.url
    try:
        return f"http://{LOOPBACK}:{stack.configure(run_dir).settings.http_port}"
    except ConfigError as error:
        raise LoadtestError(str(error)) from None


def check_host(host: str) -> str:
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadtestError(f"HOST={host!r} is not a URL like http://127.0.0.1:8080")
    return host.rstrip("/")


def stack_info(host: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET /api/info: proves the stack answers and returns the settings it runs with. An app of your own
    (APP_MODULE) has no /api/info: its 404 proves the stack answers; the settings are then unknown ({})."""
    url = f"{host}/api/info"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            info: dict[str, Any] = json.loads(response.read())
            return info
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 404:
            return {}
        raise LoadtestError(f"{url} answered {error.code}: is this the blueprint's stack?") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise LoadtestError(
            f"{host} is not reachable ({reason}); start the stack with `make up` or pass HOST=<url>"
        ) from None
    except ValueError:
        raise LoadtestError(f"{url} did not answer JSON: is this the blueprint's stack?") from None


def started_stack(host: str, run_dir: Path) -> stack.Recorded | None:
    """What run_dir records of the stack it started, when `host` is that stack's URL."""
    started = stack.recorded(run_dir)
    same = started is not None and urlsplit(host).port == urlsplit(started.url).port
    return started if same else None
