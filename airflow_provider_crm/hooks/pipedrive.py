"""Pipedrive hooks: an Airflow connection -> :class:`PipedriveSettings` -> the API client
(clients/pipedrive), plus the connection form, ``test_connection`` and links for people."""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

import requests
from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_crm.clients.pipedrive.client import PipedriveAsyncClient, PipedriveClient
from airflow_provider_crm.clients.pipedrive.entities import ENTITIES, MAX_PAGE, Entity, entity_info
from airflow_provider_crm.clients.pipedrive.errors import pipedrive_error
from airflow_provider_crm.clients.pipedrive.fields import (
    FieldMap,
    key_of,
    match_key,
    normalise_key,
    record_keys,
)
from airflow_provider_crm.clients.pipedrive.policy import DEFAULT_PLAN, PLANS, normalise_plan
from airflow_provider_crm.clients.pipedrive.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_OAUTH_TOKEN_URL,
    PipedriveSettings,
    TokenRotation,
)
from airflow_provider_crm.clients.pipedrive.transport import AsyncTransport, SyncTransport
from airflow_provider_crm.common import connection_form
from airflow_provider_crm.common.errors import CrmConfigError
from airflow_provider_crm.common.ratelimit.limiter import RateLimiter, build_limiter
from airflow_provider_crm.common.settings import ConnectionReader
from airflow_provider_crm.get_provider_info import PIPEDRIVE_CONN_FIELDS, PIPEDRIVE_UI_FIELD_BEHAVIOUR

# names operators, DAGs and tests import from here
__all__ = ["MAX_PAGE", "Entity", "FieldMap", "PipedriveAsyncHook", "PipedriveHook", "entity_info", "key_of",
           "match_key", "normalise_key", "pipedrive_error", "record_keys", "rotated_token_variable"]


def rotated_token_variable(conn_id: str) -> str:
    """The Airflow Variable where a rotated OAuth refresh token of ``conn_id`` is kept."""
    return f"pipedrive_oauth_refresh_token__{conn_id}"


def read_settings(conn_id: str, conn: Any) -> PipedriveSettings:
    """A connection, read and validated. Errors name the connection and field, never a secret."""
    reader = ConnectionReader.for_connection(conn_id, "pipedrive", conn)
    token = (conn.password or "").strip() or None
    oauth = {name: reader.text(name) for name in ("client_id", "client_secret", "refresh_token")}
    if any(oauth.values()) and not all(oauth.values()):
        missing = next(name for name, value in oauth.items() if not value)
        raise CrmConfigError(conn_id, missing,
                             "is required for OAuth (client_id, client_secret and refresh_token go together)")
    if not token and not oauth["client_id"]:
        raise CrmConfigError(conn_id, "password",
                             "is empty: set an API token, or OAuth client_id, client_secret and refresh_token")
    domain = reader.text("company_domain")
    if domain and not domain.replace("-", "").isalnum():
        raise CrmConfigError(conn_id, "company_domain", f"must be the subdomain only (like 'acme'), got {domain!r}")
    host = (conn.host or "").strip()
    if host and "://" not in host:
        host = f"https://{host}"
    default_base = f"https://{domain}.pipedrive.com" if domain else DEFAULT_BASE_URL
    return PipedriveSettings(
        conn_id=conn_id, base_url=reader.url("host", host, default_base), token=token, **oauth,
        oauth_token_url=reader.url("oauth_token_url", reader.text("oauth_token_url"), DEFAULT_OAUTH_TOKEN_URL),
        host_given=bool(host), company_domain=domain, plan=normalise_plan(reader.choice("plan", PLANS, DEFAULT_PLAN)),
        seats=reader.positive_int("seats") or 1, requests_per_2s=reader.positive_int("requests_per_2s"),
        daily_token_budget=reader.positive_int("daily_token_budget"), rate_limit_store=reader.store())


class PipedriveHook(BaseHook):
    """Talks to Pipedrive's REST API (v2 for core entities, v1 where v2 has nothing) through one connection.

    The API token travels in the ``x-api-token`` header, never in a URL. Every request passes the
    shared rate limiter (burst, search, daily POST/PUT allowance and token budget). The API methods
    are :class:`PipedriveClient`'s (``hook.client``); the hook passes the common ones on.

    :param pipedrive_conn_id: the ``pipedrive`` connection to use.
    :param timeout: seconds to wait for an answer.
    """

    conn_name_attr = "pipedrive_conn_id"
    default_conn_name = "pipedrive_default"
    conn_type = "pipedrive"
    hook_name = "Pipedrive"

    def __init__(self, pipedrive_conn_id: str = default_conn_name, timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipedrive_conn_id = pipedrive_conn_id
        self.timeout = timeout

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        return connection_form.form_widgets(PIPEDRIVE_CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return connection_form.field_behaviour(PIPEDRIVE_UI_FIELD_BEHAVIOUR)

    @cached_property
    def settings(self) -> PipedriveSettings:
        return read_settings(self.pipedrive_conn_id, self.get_connection(self.pipedrive_conn_id))

    @cached_property
    def limiter(self) -> RateLimiter:
        s = self.settings
        return build_limiter(s.policy(), s.limiter_key, store=s.rate_limit_store, conn_id=self.pipedrive_conn_id)

    @cached_property
    def client(self) -> PipedriveClient:
        return PipedriveClient(SyncTransport(self.settings, self.limiter, timeout=self.timeout,
                                             rotation=self._rotation()))

    @property
    def session(self) -> requests.Session:
        return self.client.transport.session

    def get_conn(self) -> PipedriveClient:
        return self.client

    @property
    def base_url(self) -> str:
        """The API's base URL now (an OAuth answer may have moved it to the company's ``api_domain``)."""
        return self.client.transport.base_url if "client" in self.__dict__ else self.settings.base_url

    # -- OAuth refresh tokens: kept in an Airflow Variable, masked in logs ----------------------------
    def _rotation(self) -> TokenRotation:
        variable = rotated_token_variable(self.pipedrive_conn_id)
        return TokenRotation(load=lambda: _read_variable(variable), save=self._store_rotated_refresh_token,
                             mask=_mask, where=f"the Airflow Variable {variable!r}")

    def _store_rotated_refresh_token(self, new_refresh: str) -> None:
        """Refresh tokens rotate: keep the new one where the next task finds it.

        Airflow 3's task SDK gives a task no write access to connections (secrets backends and
        ``AIRFLOW_CONN_*`` variables are read-only anyway), but it may set Variables through the API
        server. The new token goes to the Variable :func:`rotated_token_variable` names (its key holds
        "token", so Airflow masks it); every Pipedrive hook tries it before the connection's
        ``refresh_token`` extra. The token itself is never logged.
        """
        key = rotated_token_variable(self.pipedrive_conn_id)
        try:
            from airflow.sdk import Variable

            Variable.set(key, new_refresh, description=(
                f"Latest OAuth refresh token of Pipedrive connection {self.pipedrive_conn_id!r}, rotated by "
                "Pipedrive and stored by airflow-provider-crm; tried before the connection's refresh_token extra."))
        except Exception as err:  # outside a task, or the API server refused
            self.log.warning(
                "Pipedrive rotated the OAuth refresh token of connection %r. It is kept for the rest of this task "
                "but could not be stored in Variable %r (%s). The connection's 'refresh_token' extra may stop "
                "working: if it does, re-authorise the Pipedrive app and put the refresh token it issues in that "
                "extra.", self.pipedrive_conn_id, key, type(err).__name__,
            )
            return
        self.log.info(
            "Pipedrive rotated the OAuth refresh token of connection %r; the new one is stored in the Airflow "
            "Variable %r and used by the next tasks. Copy it from there into the connection's 'refresh_token' "
            "extra if you manage connections elsewhere.", self.pipedrive_conn_id, key,
        )

    # -- links for people ------------------------------------------------------------------------------
    @property
    def web_url(self) -> str:
        """The web app's address for people: the company domain, else a company host (``host`` or the
        OAuth answer's ``api_domain``), else ``https://app.pipedrive.com``, which opens the signed-in
        user's company."""
        if self.settings.company_domain:
            return f"https://{self.settings.company_domain}.pipedrive.com"
        netloc = urlparse(self.base_url).netloc.lower()
        if netloc.endswith(".pipedrive.com") and netloc.split(".")[0] not in ("api", "oauth", "app"):
            return f"https://{netloc}"
        return "https://app.pipedrive.com"

    def record_url(self, entity: str, record_id: Any) -> str | None:
        info = ENTITIES.get(entity)
        return f"{self.web_url}/{info.web_path}/{record_id}" if info and info.web_path else None

    def test_connection(self) -> tuple[bool, str]:
        try:
            me = self.client.request("GET", "v1", "/users/me")["data"]
        except Exception as err:
            return False, str(err)
        return True, f"Connected to Pipedrive as {me.get('email')} ({me.get('company_name') or me.get('company_domain')})"

    # -- the client's methods that operators, sensors and DAGs call ------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in _PASSED_ON:
            return getattr(self.client, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# PipedriveClient's methods reachable on the hook (``hook.get(...)`` is ``hook.client.get(...)``)
_PASSED_ON = frozenset({"request", "paginate", "iter_records", "iter_mail_threads", "field_map", "encode_record",
                        "get", "create", "update", "delete", "search", "find_one", "index_by", "thread_messages"})


def _read_variable(key: str) -> str | None:
    try:
        from airflow.sdk import Variable

        value = Variable.get(key, default=None)
    except Exception:  # no API server to ask (outside a task), or no such variable
        return None
    return str(value) if value else None


def _mask(secret: str) -> None:
    """Have Airflow redact ``secret`` from task logs."""
    try:
        from airflow.sdk.log import mask_secret

        mask_secret(secret)
    except Exception:  # logging not configured by Airflow (plain Python use)
        pass


class PipedriveAsyncHook(PipedriveHook):
    """The async twin for triggers: :class:`PipedriveAsyncClient` (httpx, awaited rate limiting); never
    blocks the event loop.

    :param pipedrive_conn_id: the ``pipedrive`` connection to use.
    """

    _aclient: PipedriveAsyncClient | None = None

    async def aclient(self) -> PipedriveAsyncClient:
        """The async client, built on first use (the connection read with ``aget_connection``, the
        limiter's store opened in a thread)."""
        if self._aclient is None:
            conn = await self.aget_connection(self.pipedrive_conn_id)
            settings = read_settings(self.pipedrive_conn_id, conn)
            self.__dict__["settings"] = settings
            limiter = await asyncio.to_thread(lambda: self.limiter)
            self._aclient = PipedriveAsyncClient(AsyncTransport(settings, limiter, timeout=self.timeout,
                                                                rotation=self._rotation()))
        return self._aclient

    async def aget(self, entity: str, record_id: Any) -> dict[str, Any]:
        """One record, retried in place on transient failures (as the sync hook's reads are)."""
        return await (await self.aclient()).get(entity, record_id)
