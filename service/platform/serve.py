"""`service.platform.serve:app` (PLATFORM_APP): APP_MODULE inside the platform, for a server that takes an
import path and no worker class (bare uvicorn, granian, gunicorn's `asgi` worker: loadtest/bench compares
them with ours)."""

from __future__ import annotations

from service.platform.asgi import Platform
from service.platform.loader import load
from service.settings import load_settings

settings = load_settings()
app = Platform(load(settings.app_module, settings.app_src), settings)
