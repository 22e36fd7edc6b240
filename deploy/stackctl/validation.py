"""What a layer's own validator says about a config (`make check`): nginx -t, gunicorn --check-config,
compose config and, from the runtime (runtime.Runtime.validations), e.g. `docker stack config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ValidationStatus = Literal["ok", "failed", "skipped"]


@dataclass(frozen=True)
class Validation:
    layer: str
    command: str
    status: ValidationStatus
    detail: str = ""
