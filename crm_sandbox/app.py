"""The ASGI app: both services under their prefixes, plus control endpoints under ``/_sandbox``.

- ``/pipefy/graphql`` and ``/pipefy/oauth/token``
- ``/pipedrive/api/v1/...``, ``/pipedrive/api/v2/...`` and ``/pipedrive/oauth/token``
- read-only HTML pages where the provider's extra links point (``crm_sandbox/web.py``)
- ``/_sandbox/...``: reset, counters, faults, clock, tokens (for tests and benchmarks; no auth)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from crm_sandbox.core import SandboxConfig, SandboxState, ScheduledFault
from crm_sandbox.pipedrive import PipedriveService
from crm_sandbox.pipefy import PipefyService
from crm_sandbox.web import WEB_ROUTES

SERVICES = {"pipefy": PipefyService, "pipedrive": PipedriveService}


class LatencyAndFaults:
    """Gives API answers the configured latency and applies scheduled or random faults.

    The latency is the time from a request's arrival to its answer, the sandbox's own work included:
    an answer that took 15 ms to build waits 85 ms more at 100 ms, as a real API's latency includes
    its servers' time. (Adding the latency on top of the work made every call slower than configured
    by whatever the emulator spent, a cost of this machine rather than of the client.)
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        service = path.strip("/").split("/", 1)[0]
        if service not in SERVICES:
            await self.app(scope, receive, send)
            return
        delay = self.state.latency()
        if delay:
            send = _held_until(time.monotonic() + delay, send)
        body = b""
        if self.state.wants_body(service):
            receive, body = await _buffered(receive)
        fault = self.state.take_fault(service, scope["method"], path, body)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.mode == "slow":
            await asyncio.sleep(fault.delay)
            await self.app(scope, receive, send)
        elif fault.mode == "lost":
            # The work is done, but the caller never sees the answer.
            async def swallow(message: Any) -> None:
                return None

            await self.app(scope, receive, swallow)
            await _error(502, service)(scope, receive, send)
        elif fault.mode == "truncate":
            await _truncated(self.app, scope, receive, send)
        elif fault.mode == "answer":
            await JSONResponse(fault.body, status_code=fault.status)(scope, receive, send)
        elif fault.mode == "429":
            self.state.counters.count_429(service)
            await _error(429, service)(scope, receive, send)
        else:
            await _error(fault.status, service)(scope, receive, send)


class TruncatedOnPurpose(Exception):
    """Raised by the ``truncate`` fault after half of a body: uvicorn then closes the connection."""


class _QuietTruncation(logging.Filter):
    """Keeps uvicorn's "Exception in ASGI application" traceback of a planned truncation out of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], TruncatedOnPurpose))


async def _truncated(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Do the work, then send the status, the headers with the full ``Content-Length`` and half of the
    body, and drop the connection: the client sees a body cut short (``IncompleteRead`` in urllib3,
    ``ChunkedEncodingError`` in requests, ``RemoteProtocolError`` in httpx)."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def capture(message: Any) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    body = b"".join(chunks)
    declared = max(len(body), 1)
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    headers.append((b"content-length", str(declared).encode()))
    await send({"type": "http.response.start", "status": start.get("status", 200), "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise TruncatedOnPurpose("the truncate fault cut this answer short")


async def _buffered(receive: Receive) -> tuple[Receive, bytes]:
    """The request body, read whole, and a ``receive`` that hands it to the app again."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay, body


def _held_until(deadline: float, send: Send) -> Send:
    """``send`` that holds the start of the answer until ``deadline`` (time.monotonic)."""

    async def held(message: Any) -> None:
        if message["type"] == "http.response.start":
            remaining = deadline - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
        await send(message)

    return held


def _error(status: int, service: str) -> Response:
    if service == "pipedrive":
        body = {"success": False, "error": "injected fault", "errorCode": status}
        if status == 429:
            body["error"] = "request over limit"
        return JSONResponse(body, status_code=status)
    return JSONResponse({"errors": [{"message": "injected fault", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}, status_code=status)


def create_app(config: SandboxConfig | None = None) -> Starlette:
    config = config or SandboxConfig()
    state = SandboxState(config)
    for name, cls in SERVICES.items():
        state.services[name] = cls(state)
    if config.snapshot and Path(config.snapshot).exists():
        restore_snapshot(state, Path(config.snapshot))
    if config.prerender:
        for service in state.services.values():
            prerender = getattr(service, "prerender_all", None)
            if prerender is not None:
                prerender()

    async def reset(request: Request) -> Response:
        with state.lock:
            state.clock.offset = 0.0
            state.counters.reset()
            state.scheduled_faults.clear()
            state.random.seed(config.seed)
            for service in state.services.values():
                # re-seed in place: the mounted routes are bound to these instances
                service.__init__(state)
        return JSONResponse({"ok": True})

    async def counters(request: Request) -> Response:
        if request.method == "DELETE":
            state.counters.reset()
        return JSONResponse(state.counters.as_dict())

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            items = body if isinstance(body, list) else [body]
            with state.lock:
                for item in items:
                    state.scheduled_faults.append(ScheduledFault(**item))
        elif request.method == "DELETE":
            with state.lock:
                state.scheduled_faults.clear()
        return JSONResponse([dataclasses.asdict(f) for f in state.scheduled_faults])

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            state.clock.advance(float(body.get("advance", 0)))
        return JSONResponse({"now": state.clock.now(), "offset": state.clock.offset})

    async def config_view(request: Request) -> Response:
        if request.method == "PATCH":
            body = await request.json()
            with state.lock:
                for key, value in body.items():
                    if not hasattr(config, key):
                        return JSONResponse({"error": f"unknown setting {key!r}"}, status_code=400)
                    setattr(config, key, value)
        return JSONResponse({k: v for k, v in dataclasses.asdict(config).items() if "token" not in k})

    async def tokens(request: Request) -> Response:
        """POST {"service": "pipefy", "token": "...", "plan": "starter"} registers a token."""
        body = await request.json()
        service = body["service"]
        with state.lock:
            getattr(config, f"{service}_tokens")[body["token"]] = body.get("plan", "unlimited")
        return JSONResponse({"ok": True})

    async def snapshot(request: Request) -> Response:
        if not config.snapshot:
            return JSONResponse({"error": "start the sandbox with --snapshot PATH"}, status_code=400)
        save_snapshot(state, Path(config.snapshot))
        return JSONResponse({"saved": config.snapshot})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    control = [
        Route("/health", health),
        Route("/reset", reset, methods=["POST"]),
        Route("/counters", counters, methods=["GET", "DELETE"]),
        Route("/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/clock", clock, methods=["GET", "POST"]),
        Route("/config", config_view, methods=["GET", "PATCH"]),
        Route("/tokens", tokens, methods=["POST"]),
        Route("/snapshot", snapshot, methods=["POST"]),
    ]
    routes = [Mount("/_sandbox", routes=control)]
    for name, service in state.services.items():
        # the read-only web pages first: Pipedrive's routes end with a catch-all 404
        routes.append(Mount(f"/{name}", routes=WEB_ROUTES[name](service) + service.routes()))
    app = Starlette(routes=routes)

    app.state.sandbox = state
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietTruncation) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_QuietTruncation())
    return LatencyAndFaults(app, state)  # type: ignore[return-value]


def save_snapshot(state: SandboxState, path: Path) -> None:
    with state.lock:
        data = {name: service.snapshot() for name, service in state.services.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(pickle.dumps(data))
    tmp.replace(path)


def restore_snapshot(state: SandboxState, path: Path) -> None:
    data = pickle.loads(path.read_bytes())
    for name, service in state.services.items():
        if name in data:
            service.restore(data[name])


def describe(base_url: str, config: SandboxConfig) -> dict[str, Any]:
    """What a user needs to point connections at this sandbox."""
    return {
        "pipefy_url": f"{base_url}/pipefy/graphql",
        "pipefy_oauth_token_url": f"{base_url}/pipefy/oauth/token",
        "pipefy_tokens": config.pipefy_tokens,
        "pipedrive_url": f"{base_url}/pipedrive",
        "pipedrive_oauth_token_url": f"{base_url}/pipedrive/oauth/token",
        "pipedrive_tokens": config.pipedrive_tokens,
        "control_url": f"{base_url}/_sandbox",
    }


__all__ = ["create_app", "describe"]
