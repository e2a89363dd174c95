"""How a Pipedrive request is made: one base that prepares requests (auth headers, OAuth refresh, the
limiter's kind and cost, the URL) and reads answers (envelopes, typed errors, the limiter's
``after_response``), with thin I/O subclasses: :class:`SyncTransport` (requests) and
:class:`AsyncTransport` (httpx). Both retry the same way (common/retry.py, common/writes.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests

from airflow_provider_crm.clients.pipedrive.errors import envelope
from airflow_provider_crm.clients.pipedrive.policy import SERVICE, token_cost
from airflow_provider_crm.clients.pipedrive.settings import PipedriveSettings, TokenRotation
from airflow_provider_crm.common import http, jsoncodec
from airflow_provider_crm.common.errors import CrmAuthError, CrmTransientApiError
from airflow_provider_crm.common.ratelimit.limiter import RateLimiter
from airflow_provider_crm.common.retry import acall_with_retries, call_with_retries
from airflow_provider_crm.common.writes import acreate_safely, create_safely


@dataclass(frozen=True)
class Call:
    """One API request.

    :param path: the path after ``/api/<version>``.
    :param kind: the limiter's kind (``read``, ``write``, ``search``); by default from the method.
    :param lookup: for a create: a way to find the record an earlier attempt may have created (see
        common/writes.py); the client turns it into a callable of its own I/O kind.
    """

    method: str
    version: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    kind: str | None = None
    description: str | None = None
    lookup: Any = field(default=None, compare=False)

    @property
    def verb(self) -> str:
        return self.method.upper()

    @property
    def limiter_kind(self) -> str:
        return self.kind or ("write" if self.verb in ("POST", "PUT", "PATCH") else "read")

    @property
    def what(self) -> str:
        return f"{self.verb} /api/{self.version}{self.path}"

    @property
    def label(self) -> str:
        return self.description or f"{self.verb} {self.path}"


class PipedriveTransport:
    """What both I/O kinds share: credentials and their refresh, the limiter, URLs, reading answers.

    :param settings: the connection.
    :param limiter: the token's rate limiter.
    :param timeout: seconds to wait for an answer.
    :param rotation: what to do with rotated OAuth refresh tokens (see :class:`TokenRotation`).
    """

    def __init__(self, settings: PipedriveSettings, limiter: RateLimiter, *, timeout: float = 60.0,
                 rotation: TokenRotation | None = None) -> None:
        self.settings = settings
        self.limiter = limiter
        self.timeout = timeout
        self.rotation = rotation or TokenRotation()
        self.base_url = settings.base_url  # an OAuth answer's api_domain may replace it
        self._access_token: str | None = None
        self._access_expires = 0.0
        self._refresh_token: str | None = None  # rotated in this process

    # -- preparing ---------------------------------------------------------------------------------
    def url(self, version: str, path: str) -> str:
        return f"{self.base_url}/api/{version}/{path.lstrip('/')}"

    def cost(self, call: Call) -> int:
        return token_cost(call.verb, call.path, call.version)

    @property
    def oauth(self) -> bool:
        return self.settings.auth_type == "oauth"

    def token_headers(self) -> dict[str, str] | None:
        """The API token's header, or None with OAuth (see :meth:`bearer`)."""
        return None if self.oauth else {"x-api-token": self.settings.token or ""}

    def needs_refresh(self, force: bool) -> bool:
        return force or not self._access_token or time.time() > self._access_expires - 60

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._access_token}"}

    def refresh_candidates(self) -> list[str]:
        """Refresh tokens to try, newest first: the one rotated in this process, the one an earlier run
        kept (``rotation.load``), the connection's."""
        found = [t for t in (self._refresh_token, self.rotation.load(), self.settings.refresh_token) if t]
        return list(dict.fromkeys(found))

    def token_request(self, refresh: str) -> dict[str, Any]:
        s = self.settings
        return {"data": {"grant_type": "refresh_token", "refresh_token": refresh},
                "auth": (s.client_id or "", s.client_secret or "")}

    def stale(self, status: int, refresh: str) -> bool:
        """A stored refresh token was refused: fall back to an older source."""
        return status in (400, 401) and refresh != self.settings.refresh_token

    @staticmethod
    def oauth_unreachable(err: BaseException) -> CrmTransientApiError:
        return CrmTransientApiError(f"OAuth endpoint: {http.failure_text(err)}", service=SERVICE)

    def accept_token_answer(self, status: int, content: bytes, content_type: str | None, refresh: str) -> bool:
        """Take a token answer; returns True when Pipedrive rotated the refresh token (then kept through
        ``rotation.save``)."""
        if status >= 500:
            raise CrmTransientApiError("OAuth endpoint error", service=SERVICE, status=status)
        if status != 200:
            conn_id = self.settings.conn_id
            raise CrmAuthError(
                f"OAuth refresh refused for connection {conn_id!r}: check client_id, client_secret and "
                f"refresh_token (a refresh token that was rotated away no longer works; the latest one is kept "
                f"in {self.rotation.where} when tasks could store it; otherwise re-authorise the app to get a "
                "new one)", service=SERVICE, status=status)
        try:
            body = jsoncodec.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("access_token"):
            raise CrmTransientApiError(
                "OAuth endpoint: " + (http.not_json(content, content_type) if body is None
                                      else "the answer holds no access_token"), service=SERVICE, status=status)
        self._access_token = str(body["access_token"])
        self.rotation.mask(self._access_token)
        self._access_expires = time.time() + float(body.get("expires_in") or 3600)
        if body.get("api_domain") and not self.settings.host_given:
            self.base_url = str(body["api_domain"]).rstrip("/")
        new_refresh = body.get("refresh_token")
        if new_refresh and new_refresh != refresh:
            self.rotation.mask(str(new_refresh))
            self._refresh_token = str(new_refresh)
            self.rotation.save(str(new_refresh))
            return True
        return False

    def auth_again(self, status: int, attempt: int) -> bool:
        """A 401 on the first attempt with OAuth: the access token expired early; refresh and repeat."""
        return status == 401 and attempt == 1 and self.oauth

    # -- reading -----------------------------------------------------------------------------------
    def read(self, status: int, content: bytes, content_type: str | None, what: str) -> dict[str, Any]:
        """The answer's envelope, else its typed error (an auth error names the connection)."""
        try:
            return envelope(status, content, content_type, what)
        except CrmAuthError as err:  # say which connection holds the refused credentials
            err.args = (f"{err}; connection {self.settings.conn_id!r}: check its API token or OAuth client",)
            raise


class SyncTransport(PipedriveTransport):
    """Requests with ``requests``, one pooled session shared by the client's threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session = http.pooled_session()
        self.session.headers.update({"Accept": "application/json"})
        self._auth_lock = threading.Lock()

    def auth_headers(self, force_refresh: bool = False) -> dict[str, str]:
        headers = self.token_headers()
        if headers is not None:
            return headers
        with self._auth_lock:
            if self.needs_refresh(force_refresh):
                self.refresh()
            return self.bearer()

    def refresh(self) -> None:
        """A new access token from a refresh token (see :meth:`refresh_candidates`)."""
        resp: Any = None
        refresh = ""
        for refresh in self.refresh_candidates():
            try:
                resp = self.session.post(self.settings.oauth_token_url, timeout=self.timeout,
                                         **self.token_request(refresh))
            except http.TRANSPORT_ERRORS as err:
                raise self.oauth_unreachable(err) from None
            if not self.stale(resp.status_code, refresh):
                break
        self.accept_token_answer(resp.status_code, resp.content, resp.headers.get("content-type"), refresh)

    def request_once(self, call: Call, lazy: bool = False) -> Any:
        """One attempt (with one OAuth refresh on a 401). ``lazy``: a successful answer is returned as a
        :class:`jsoncodec.Envelope` with ``data`` still undecoded."""
        kind = call.limiter_kind
        resp: requests.Response | None = None
        for attempt in (1, 2):
            # auth first: an OAuth refresh may move the base URL to the answer's api_domain
            headers = self.auth_headers(force_refresh=attempt == 2)
            # each attempt is a request
            with self.limiter.request(kind=kind, cost=self.cost(call), hold=2 * self.timeout):
                resp = http.send(self.session, call.verb, self.url(call.version, call.path), what=call.what,
                                 service=SERVICE, timeout=self.timeout, params=call.params, json=call.json,
                                 headers=headers)
            self.limiter.after_response(resp.status_code, resp.headers, kind=kind)
            if self.auth_again(resp.status_code, attempt):
                resp.close()
                continue
            break
        assert resp is not None
        content = http.read_body(resp, what=call.what, service=SERVICE)
        if lazy and resp.status_code < 400:
            try:
                answer = jsoncodec.loads_envelope(content)
            except ValueError:
                answer = None
            if answer is not None and answer.success is not False:
                return answer
        return self.read(resp.status_code, content, resp.headers.get("content-type"), call.what)

    def request(self, call: Call, lookup: Callable[[], Any] | None = None) -> Any:
        """One call, retried when safe: everything but POST, and a POST refused before it ran (429,
        503) or, with a ``lookup``, one whose answer was lost and that the lookup does not find."""
        if call.verb == "POST":
            return create_safely(lambda: self.request_once(call), lookup=lookup, description=call.label,
                                 stats=self.limiter.stats)
        return call_with_retries(lambda: self.request_once(call), idempotent=True, description=call.label,
                                 stats=self.limiter.stats)


class AsyncTransport(PipedriveTransport):
    """Requests with ``httpx``; the limiter is awaited and its store I/O runs in a thread, so nothing
    blocks the event loop (triggers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._auth_lock = asyncio.Lock()

    async def auth_headers(self, client: httpx.AsyncClient, force_refresh: bool = False) -> dict[str, str]:
        headers = self.token_headers()
        if headers is not None:
            return headers
        async with self._auth_lock:
            if self.needs_refresh(force_refresh):
                await self.refresh(client)
            return self.bearer()

    async def refresh(self, client: httpx.AsyncClient) -> None:
        # reading and keeping the rotated token are blocking calls (an API server): off the event loop
        resp: Any = None
        refresh = ""
        for refresh in await asyncio.to_thread(self.refresh_candidates):
            try:
                resp = await client.post(self.settings.oauth_token_url, **self.token_request(refresh))
            except httpx.HTTPError as err:
                raise self.oauth_unreachable(err) from None
            if not self.stale(resp.status_code, refresh):
                break
        await asyncio.to_thread(self.accept_token_answer, resp.status_code, resp.content,
                                resp.headers.get("content-type"), refresh)

    async def request_once(self, call: Call) -> dict[str, Any]:
        kind = call.limiter_kind
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for attempt in (1, 2):
                headers = await self.auth_headers(client, force_refresh=attempt == 2)
                slot = await self.limiter.before_request_async(kind=kind, cost=self.cost(call),
                                                               hold=2 * self.timeout)
                try:
                    resp = await http.asend(client, call.verb, self.url(call.version, call.path), what=call.what,
                                            service=SERVICE, headers=headers, params=call.params, json=call.json)
                finally:
                    await asyncio.to_thread(self.limiter.release, slot)
                await asyncio.to_thread(self.limiter.after_response, resp.status_code, resp.headers, kind)
                if not self.auth_again(resp.status_code, attempt):
                    break
        return self.read(resp.status_code, resp.content, resp.headers.get("content-type"), call.what)

    async def request(self, call: Call, lookup: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """As :meth:`SyncTransport.request`: the same retries, the same error naming."""
        if call.verb == "POST":
            return await acreate_safely(lambda: self.request_once(call), lookup=lookup, description=call.label,
                                        stats=self.limiter.stats)
        return await acall_with_retries(lambda: self.request_once(call), idempotent=True, description=call.label,
                                        stats=self.limiter.stats)
