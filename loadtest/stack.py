"""Where the stack under test is: its URL and the settings it runs with. No Locust imports here."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_DIR = ROOT / ".run" / "local"


class LoadtestError(Exception):
    """A problem the user can fix; the message is one line that says what and how."""


def default_host(run_dir: Path = DEFAULT_RUN_DIR) -> str:
    """The running local stack's URL from its state.json, else 127.0.0.1 on the effective HTTP_PORT."""
    try:
        state = json.loads((run_dir / "state.json").read_text())
        return f"http://127.0.0.1:{int(state['http_port'])}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from deploy.stackctl.config import effective

    return f"http://127.0.0.1:{effective().settings.http_port}"


def check_host(host: str) -> str:
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadtestError(f"HOST={host!r} is not a URL like http://127.0.0.1:8080")
    return host.rstrip("/")


def stack_info(host: str, timeout: float = 3.0) -> dict[str, Any]:
    """GET /api/info: proves the stack answers and returns the settings it runs with."""
    url = f"{host}/api/info"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            info: dict[str, Any] = json.loads(response.read())
            return info
    except urllib.error.HTTPError as error:
        error.close()
        raise LoadtestError(f"{url} answered {error.code}: is this the blueprint's stack?") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise LoadtestError(
            f"{host} is not reachable ({reason}); start the stack with `make up` or pass HOST=<url>"
        ) from None
    except ValueError:
        raise LoadtestError(f"{url} did not answer JSON: is this the blueprint's stack?") from None


def same_port(host: str, run_dir: Path) -> bool:
    try:
        state = json.loads((run_dir / "state.json").read_text())
        return urlsplit(host).port == int(state["http_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
