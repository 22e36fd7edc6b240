"""The app's lifespan, driven by the platform: the startup within a time limit, then the shutdown.

The platform speaks the lifespan protocol to the server itself and runs the app's own lifespan inside it,
so that an app whose startup raises or hangs stops its worker with one line naming the cause, and an app
that does not speak the protocol at all (a bare ASGI function) still runs.
"""

from __future__ import annotations

import asyncio
import logging

from service.platform.types import ASGIApp, Message, Scope

log = logging.getLogger("service.platform")


class LifespanError(Exception):
    """The app's lifespan failed: the message is one line; the app's own exception, if any, its cause."""


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


class AppLifespan:
    """One run of the app's lifespan: `startup(timeout)`, later `shutdown()`. Both raise LifespanError."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self.app = app
        self.scope = scope
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.asked = False  # the app has read its first event: it speaks the lifespan protocol
        self.supported = True
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> Message:
        self.asked = True
        return await self.to_app.get()

    async def send(self, message: Message) -> None:
        await self.from_app.put(message)

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    async def startup(self, timeout: float) -> None:
        self.task = task = asyncio.create_task(self.run())
        await self.to_app.put({"type": "lifespan.startup"})
        try:
            async with asyncio.timeout(timeout):
                message = await self.next_message(task)
        except TimeoutError:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            raise LifespanError(
                f"lifespan startup did not finish within APP_STARTUP_TIMEOUT={timeout:g}s"
            ) from None
        except Exception as error:
            if not self.asked:
                # It raised before reading the startup event, as an app written for HTTP alone does when
                # it gets another scope type: it does not speak the protocol (uvicorn's "auto" reading).
                self.supported = False
                log.info("the app does not speak the lifespan protocol (%s): no startup", describe(error))
                return
            raise LifespanError(f"lifespan startup raised {describe(error)}") from error
        if message is None:
            self.supported = False  # it returned without a word
            return
        if message["type"] == "lifespan.startup.failed":
            raise await self.failure("startup", task, message)
        if message["type"] != "lifespan.startup.complete":
            raise LifespanError(f"lifespan startup answered {message['type']!r}")

    async def shutdown(self) -> None:
        task = self.task
        if not self.supported or task is None or task.done():
            return
        await self.to_app.put({"type": "lifespan.shutdown"})
        try:
            message = await self.next_message(task)
        except Exception as error:
            raise LifespanError(f"lifespan shutdown raised {describe(error)}") from error
        if message is not None and message["type"] == "lifespan.shutdown.failed":
            raise await self.failure("shutdown", task, message)

    async def next_message(self, task: asyncio.Task[None]) -> Message | None:
        """The app's next message; None when its lifespan returned without one; its exception re-raised."""
        getter = asyncio.ensure_future(self.from_app.get())
        try:
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        if not self.from_app.empty():
            return self.from_app.get_nowait()
        task.result()
        return None

    async def failure(self, phase: str, task: asyncio.Task[None], message: Message) -> LifespanError:
        """Starlette sends `*.failed` with the whole traceback as its message and re-raises right after:
        the exception itself makes the better line."""
        await asyncio.wait({task}, timeout=1.0)
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:
            failed = LifespanError(f"lifespan {phase} raised {describe(error)}")
            failed.__cause__ = error
            return failed
        return LifespanError(f"lifespan {phase} failed: {last_line(str(message.get('message') or ''))}")
