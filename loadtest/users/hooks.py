"""Typed views of Locust's events, which locust leaves unannotated: a listener decorator, and one request
sample fired for a protocol Locust does not time itself (WebSocket, stream chunks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from locust.env import Environment

Handler = TypeVar("Handler", bound=Callable[..., None])


class Hook(Protocol):
    """A Locust event, locust.event.EventHook."""

    def add_listener(self, handler: Handler) -> Handler: ...

    def fire(self, *, reverse: bool = False, **kwargs: Any) -> None: ...


def listener(event: Hook) -> Callable[[Handler], Handler]:
    """`@listener(events.init)`: EventHook.add_listener as a typed decorator."""
    return event.add_listener


def report_sample(
    environment: Environment,
    request_type: str,
    name: str,
    started: float,
    length: int = 0,
    exception: Exception | None = None,
    response_time: float | None = None,
) -> None:
    """One row sample for a protocol Locust does not time itself (WebSocket, stream chunks)."""
    request: Hook = environment.events.request
    request.fire(
        request_type=request_type,
        name=name,
        response_time=(time.perf_counter() - started) * 1000 if response_time is None else response_time,
        response_length=length,
        exception=exception,
        context={},
    )
