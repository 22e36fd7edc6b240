"""Which app the drills' and the bench's stacks serve (APP_MODULE, as `make up` would resolve it), and why a
row that needs one of the demo's own routes does not run on another app."""

from __future__ import annotations

from collections.abc import Mapping

from deploy.stackctl import stack
from deploy.stackctl.config import effective
from loadtest.errors import LoadtestError
from service.settings import DEMO_APP, ConfigError


def served_app(base: Mapping[str, str] | None) -> str:
    """APP_MODULE from `base` (default: this process's environment and `.env`), the demo when unset."""
    try:
        return effective(*stack.environment(None, base)).settings.app_module
    except ConfigError as error:
        raise LoadtestError(str(error)) from None


def needs_demo(route: str, app_module: str) -> str:
    """Why a row that needs the demo's `route` cannot run on `app_module` ('' when it can)."""
    if not route or app_module == DEMO_APP:
        return ""
    return f"needs the demo's {route}: APP_MODULE={app_module} is not the demo ({DEMO_APP})"
