"""Pipefy's transport under gql's ``Client``: one base that prepares requests and reads answers, with
thin sync (requests) and async (httpx) subclasses that only do the I/O.

gql's stock HTTP transports raise on any status of 400 or more before the body is read and do not
hand the answer's headers to a rate limiter, so ours subclass gql's ``Transport`` / ``AsyncTransport``
and keep what the stock ones cannot: the limiter before each request and ``after_response`` with the
status and headers, the service-account token fetched and refreshed under a lock (sync and async),
Pipefy's error shapes typed (HTTP 200 with ``errors`` or a singular ``error`` included), our transport
failure mapping and timeouts. Retries are the client's (common/retry.py).

The request's steps are written once, as a generator (:meth:`PipefyTransportBase.steps`) that yields
what it needs done (``("bearer", force)``, ``("limit", kind)``, ``("post", body, headers, slot)``,
``("after", status, headers, kind)``); each subclass has a method of each step's name doing it with
its own I/O (sync, or awaited).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import httpx
import requests
from gql.graphql_request import GraphQLRequest
from gql.transport import Transport
from gql.transport.async_transport import AsyncTransport
from graphql import ExecutionResult

from airflow_provider_crm.clients.pipefy.documents import query_text
from airflow_provider_crm.clients.pipefy.errors import read_answer, token_answer
from airflow_provider_crm.clients.pipefy.settings import PipefySettings
from airflow_provider_crm.common import http, jsoncodec
from airflow_provider_crm.common.errors import CrmRateLimitError
from airflow_provider_crm.common.ratelimit.limiter import RateLimiter, Slot

WHAT = "POST graphql"
Answer = tuple[int, Any, bytes]  # status, headers, body
Steps = Generator[tuple[Any, ...], Any, dict[str, Any]]


class PipefyTransportBase:
    """Auth, limiter, request body and headers, and the reading of answers; no I/O of its own.

    :param settings: the connection's settings.
    :param limiter: the limiter of the connection's credential.
    :param timeout: seconds to wait for an answer.
    :param on_secret: called with each access token fetched (the hook passes Airflow's secret masking).
    """

    def __init__(self, settings: PipefySettings, limiter: RateLimiter, timeout: float = 60.0,
                 on_secret: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.timeout = timeout
        self.on_secret = on_secret
        self._token: str | None = None
        self._token_expires = 0.0

    # -- service-account token ---------------------------------------------------------------------
    def token_due(self, force: bool) -> bool:
        return force or not self._token or time.time() > self._token_expires - 60

    def token_form(self) -> dict[str, Any]:
        s = self.settings
        return {"grant_type": "client_credentials", "client_id": s.client_id, "client_secret": s.client_secret}

    def keep_token(self, status: int, content: bytes, content_type: str | None) -> str:
        """Read a token endpoint's answer and keep its token until shortly before it expires."""
        try:
            body = jsoncodec.loads(content)
        except ValueError:
            body = None
        body = token_answer(status, body, content, content_type, self.settings.conn_id)
        self._token, self._token_expires = str(body["access_token"]), time.time() + float(body.get("expires_in") or 3600)
        if self.on_secret is not None:
            self.on_secret(self._token)
        return self._token

    # -- one request -------------------------------------------------------------------------------
    def steps(self, request: GraphQLRequest, kind: str) -> Steps:
        """What one request does, in order; the subclass performs each yielded step."""
        body = {"query": query_text(request.document), "variables": request.variable_values or {}}
        for attempt in (1, 2):
            bearer = yield ("bearer", attempt == 2)
            slot = yield ("limit", kind)  # each attempt is a request; posting releases the slot
            status, headers, content = yield ("post", body, {"Authorization": f"Bearer {bearer}"}, slot)
            yield ("after", status, headers, kind)
            if not (status == 401 and attempt == 1 and self.settings.client_id):
                break  # else the service-account token may have expired early: refresh it once
        try:
            return read_answer(status, content, headers.get("content-type"), self.settings.conn_id)
        except CrmRateLimitError:
            if status != 429:  # a rate-limit error inside a 200: wait out the block all the same
                yield ("after", 429, headers, kind)
            raise


class PipefySyncTransport(PipefyTransportBase, Transport):
    """Requests' pooled session, shared by the client's threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: requests.Session = http.pooled_session()
        self._token_lock = threading.Lock()

    def connect(self) -> None:
        """Nothing to open: the pooled session connects on demand."""

    def close(self) -> None:
        self.session.close()

    def _post(self, url: str, **kwargs: Any) -> Answer:
        resp = http.send(self.session, "POST", url, what=WHAT, service="pipefy", timeout=self.timeout, **kwargs)
        return resp.status_code, resp.headers, http.read_body(resp, what=WHAT, service="pipefy")

    def bearer(self, force: bool = False) -> str:
        if not self.settings.client_id:
            return str(self.settings.token)
        with self._token_lock:
            if self.token_due(force):
                status, headers, content = self._post(self.settings.oauth_token_url, data=self.token_form())
                return self.keep_token(status, content, headers.get("content-type"))
            return str(self._token)

    def limit(self, kind: str) -> Slot:
        return self.limiter.before_request(kind=kind, hold=2 * self.timeout)

    def after(self, status: int, headers: Any, kind: str) -> None:
        self.limiter.after_response(status, headers, kind=kind)

    def post(self, body: dict[str, Any], headers: dict[str, str], slot: Slot) -> Answer:
        try:
            return self._post(self.settings.api_url, json=body, headers=headers)
        finally:
            self.limiter.release(slot)

    def execute(self, request: GraphQLRequest, *args: Any, kind: str = "read", **kwargs: Any) -> ExecutionResult:
        steps, reply = self.steps(request, kind), None
        try:
            while True:
                step = steps.send(reply)
                reply = getattr(self, step[0])(*step[1:])
        except StopIteration as done:
            return ExecutionResult(data=done.value)


class PipefyAsyncTransport(PipefyTransportBase, AsyncTransport):
    """httpx, awaited: never blocks an event loop (the limiter's store I/O and the TLS set-up run in a
    thread). One httpx client and one token lock per running loop (neither can cross loops): requests
    reuse connections, and concurrent coroutines fetch one token between them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls: ssl.SSLContext | None = None
        self._loop_state: tuple[int, httpx.AsyncClient, asyncio.Lock] | None = None

    async def connect(self) -> None:
        """Load the CA certificates once, off the loop (about 50 ms of blocking work otherwise)."""
        if self._tls is None:
            self._tls = await asyncio.to_thread(httpx.create_ssl_context)

    async def close(self) -> None:
        state, self._loop_state = self._loop_state, None
        if state is not None and state[0] == id(asyncio.get_running_loop()):
            await state[1].aclose()

    def subscribe(self, request: GraphQLRequest) -> Any:
        raise NotImplementedError("Pipefy subscriptions are not used")

    def _state(self) -> tuple[httpx.AsyncClient, asyncio.Lock]:
        """The running loop's httpx client and token lock."""
        loop = id(asyncio.get_running_loop())
        if self._loop_state is None or self._loop_state[0] != loop:
            client = httpx.AsyncClient(timeout=self.timeout, verify=self._tls or True)
            self._loop_state = (loop, client, asyncio.Lock())
        return self._loop_state[1], self._loop_state[2]

    async def _post(self, url: str, **kwargs: Any) -> Answer:
        resp = await http.asend(self._state()[0], "POST", url, what=WHAT, service="pipefy", **kwargs)
        return resp.status_code, resp.headers, resp.content

    async def bearer(self, force: bool = False) -> str:
        if not self.settings.client_id:
            return str(self.settings.token)
        async with self._state()[1]:
            if self.token_due(force):
                status, headers, content = await self._post(self.settings.oauth_token_url, data=self.token_form())
                return self.keep_token(status, content, headers.get("content-type"))
            return str(self._token)

    async def limit(self, kind: str) -> Slot:
        return await self.limiter.before_request_async(kind=kind, hold=2 * self.timeout)

    async def after(self, status: int, headers: Any, kind: str) -> None:
        await asyncio.to_thread(self.limiter.after_response, status, headers, kind=kind)

    async def post(self, body: dict[str, Any], headers: dict[str, str], slot: Slot) -> Answer:
        try:
            return await self._post(self.settings.api_url, json=body, headers=headers)
        finally:
            await asyncio.to_thread(self.limiter.release, slot)

    async def execute(self, request: GraphQLRequest, *args: Any, kind: str = "read", **kwargs: Any
                      ) -> ExecutionResult:
        steps: Steps = self.steps(request, kind)
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return ExecutionResult(data=done.value)
            reply = await getattr(self, step[0])(*step[1:])
