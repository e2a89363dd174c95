"""An Airflow plugin (the ``airflow.plugins`` entry point) with one API-server middleware that makes the
connection list's **Test** button work for Pipefy and Pipedrive connections.

Airflow 3.3's connection list sends ``"port": Number(port)`` with its Test button: ``0`` for a
connection stored without a port, which is how the form stores ours (it hides the port field). The
API server then sees a port "differing" from the stored one (0 against none), refuses to reuse the
stored token and answers 400 *Bad Request* ("The host or port to test differs from the stored
connection"). Neither hook uses the port, so for these two connection types the middleware drops a
``port`` of 0 or "" from ``POST .../connections/test`` before Airflow reads it: the stored port is kept
and only the host is compared. The host check, which keeps stored credentials from being sent to
another address, is untouched. Every other request passes through unread.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.plugins_manager import AirflowPlugin

CONN_TYPES = frozenset({"pipefy", "pipedrive"})
TEST_PATH_SUFFIX = "/api/v2/connections/test"
MAX_BODY = 1 << 20  # a connection test body is a few hundred bytes; larger ones pass through unread


class ConnectionTestPortMiddleware:
    """ASGI middleware: drop an unused ``port`` of 0 from connection tests of CRM connections."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope.get("type") != "http" or scope.get("method") != "POST"
                or not str(scope.get("path", "")).rstrip("/").endswith(TEST_PATH_SUFFIX)):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay(b"".join(chunks), message), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = bool(message.get("more_body"))
            if size > MAX_BODY:
                break
        body = b"".join(chunks)
        if not more:
            new_body = drop_unused_port(body)
            if new_body is not body:
                body = new_body
                scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
                         + [(b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay(body, None, more_body=more, receive=receive), send)


def drop_unused_port(body: bytes) -> bytes:
    """The test request's body without ``port`` when it is a CRM connection's 0 or ""; else ``body`` itself."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if (not isinstance(data, dict) or data.get("conn_type") not in CONN_TYPES or "port" not in data
            or data["port"] not in (0, "0", "")):
        return body
    del data["port"]
    return json.dumps(data).encode()


def _replay(body: bytes, last: dict[str, Any] | None, *, more_body: bool = False, receive: Any = None) -> Any:
    """A ``receive`` that hands ``body`` over once, then ``last`` or the rest of the original stream."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more_body}
        if last is not None:
            return last
        return await receive()

    return replayed


class CrmProviderPlugin(AirflowPlugin):
    """The CRM provider's plugin: the connection-test middleware above (API server only)."""

    name = "crm_provider"
    fastapi_root_middlewares = [  # noqa: RUF012 (AirflowPlugin declares these as class lists)
        {"name": "crm-connection-test-port", "middleware": ConnectionTestPortMiddleware, "args": [], "kwargs": {}},
    ]
