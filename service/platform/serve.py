"""`service.platform.serve:app`: APP_MODULE inside the platform, for a server that takes an import path
and no worker class (bare uvicorn, granian: loadtest/bench compares them with the blueprint's worker)."""

from __future__ import annotations

from service.platform.asgi import Platform
from service.platform.loader import load
from service.settings import load_settings

settings = load_settings()
app = Platform(load(settings.app_module, settings.app_src), settings)
