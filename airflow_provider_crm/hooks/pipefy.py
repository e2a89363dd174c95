"""Pipefy hooks: an Airflow connection read into :class:`PipefySettings`, and the API client over it
(airflow_provider_crm/clients/pipefy). The hook adds what only Airflow has: the connection, its form,
``test_connection``, secret masking and links for people."""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import replace
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

from airflow.providers.common.compat.sdk import BaseHook
from graphql import DocumentNode

from airflow_provider_crm.clients.pipefy.client import (
    PipefyAsyncClient,
    PipefyClient,
    build_async_client,
    build_pipefy_limiter,
)
from airflow_provider_crm.clients.pipefy.settings import PipefySettings
from airflow_provider_crm.clients.pipefy.values import (
    flatten_card_fields,
    machine_value,
    same_value,
    to_pipefy_value,
)
from airflow_provider_crm.common import connection_form
from airflow_provider_crm.common.ratelimit.limiter import RateLimiter
from airflow_provider_crm.get_provider_info import PIPEFY_CONN_FIELDS, PIPEFY_UI_FIELD_BEHAVIOUR

__all__ = ["PipefyAsyncHook", "PipefyHook", "card_url", "flatten_card_fields", "machine_value", "pipe_url",
           "same_value", "table_url", "to_pipefy_value", "web_url_for"]

WEB_URL = "https://app.pipefy.com"

# The client's API, also reachable on the hook (``hook.get_card(...)`` is ``hook.client.get_card(...)``).
CLIENT_API = frozenset({
    "me", "get_pipe", "get_phase", "pipe_fields", "resolve_field", "resolve_phase", "key_value", "value",
    "get_card", "iter_pipe_cards", "iter_phase_cards", "find_cards", "create_card", "update_card",
    "update_fields_values", "move_card", "delete_card", "create_comment", "get_table", "iter_table_records",
    "find_table_records", "create_table_record", "update_table_record", "set_table_record_field_value",
    "upload_attachment", "delete_table_record", "execute", "post_once", "paginate", "page_size",
})


def _mask(secret: str) -> None:
    """Have Airflow redact ``secret`` (a fetched access token) from task logs, where Airflow logs."""
    with contextlib.suppress(Exception):
        importlib.import_module("airflow.sdk.log").mask_secret(secret)


def web_url_for(api_url: str) -> str:
    """Pipefy's web app for an API URL: app.pipefy.com for Pipefy's cloud; otherwise the API URL
    without its ``/graphql`` path (a single-tenant domain, or the sandbox's ``/pipefy`` base)."""
    parsed = urlparse(api_url)
    if (parsed.hostname or "").lower() in ("api.pipefy.com", "app.pipefy.com"):
        return WEB_URL
    base = api_url.split("?", 1)[0].rstrip("/")
    if base.endswith("/graphql"):
        base = base[: -len("/graphql")]
    return base


def card_url(card_id: str | int, web_url: str = WEB_URL) -> str:
    """The card as people open it: ``<web>/open-cards/<id>``."""
    return f"{web_url}/open-cards/{card_id}"


def pipe_url(pipe_id: str | int, web_url: str = WEB_URL) -> str:
    """The pipe as people open it: ``<web>/pipes/<id>``."""
    return f"{web_url}/pipes/{pipe_id}"


def table_url(table_id: str | int, web_url: str = WEB_URL) -> str:
    """A database table as people open it: ``<web>/database_v2/tables/<id>``."""
    return f"{web_url}/database_v2/tables/{table_id}"


class PipefyHook(BaseHook):
    """Talks to Pipefy's GraphQL API through one Airflow connection.

    Every request passes the shared rate limiter (500 requests / 30 s per token, the plan's monthly
    quota) and is retried when that is safe. The API methods are the client's (:attr:`client`,
    :class:`~airflow_provider_crm.clients.pipefy.client.PipefyClient`) and can be called on the hook.

    :param pipefy_conn_id: the ``pipefy`` connection to use.
    :param timeout: seconds to wait for an answer.
    :param page_size: nodes asked for per page, instead of the connection's ``page_size`` (default 50).
    """

    conn_name_attr = "pipefy_conn_id"
    default_conn_name = "pipefy_default"
    conn_type = "pipefy"
    hook_name = "Pipefy"

    def __init__(self, pipefy_conn_id: str = default_conn_name, timeout: float = 60.0, page_size: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipefy_conn_id = pipefy_conn_id
        self.timeout = timeout
        self.page_size_override = page_size

    # -- connection form (Airflow 3.0 / 3.1; 3.2+ reads get_provider_info) ---------------------------
    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        return connection_form.form_widgets(PIPEFY_CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return connection_form.field_behaviour(PIPEFY_UI_FIELD_BEHAVIOUR)

    # -- connection -> settings -> client ------------------------------------------------------------
    @cached_property
    def settings(self) -> PipefySettings:
        """The connection, read and validated. Errors name the connection and field, never a secret."""
        return self.read_settings(self.get_connection(self.pipefy_conn_id))

    def read_settings(self, conn: Any) -> PipefySettings:
        settings = PipefySettings.from_connection(self.pipefy_conn_id, conn)
        return replace(settings, page_size=self.page_size_override) if self.page_size_override else settings

    @cached_property
    def limiter(self) -> RateLimiter:
        return build_pipefy_limiter(self.settings)

    @cached_property
    def client(self) -> PipefyClient:
        return PipefyClient(self.settings, self.limiter, self.timeout, on_secret=_mask, log=self.log)

    def get_conn(self) -> PipefyClient:
        return self.client

    def __getattr__(self, name: str) -> Any:
        if name in CLIENT_API:
            return getattr(self.client, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def test_connection(self) -> tuple[bool, str]:
        try:
            me = self.client.me()
        except Exception as err:  # the UI shows the message
            return False, str(err)
        return True, f"Connected to Pipefy as {me.get('email') or me.get('name')} (user {me.get('id')})"

    # -- links for people ----------------------------------------------------------------------------
    @property
    def web_url(self) -> str:
        """Base URL of Pipefy's web app for this connection: the ``web_url`` extra, else derived from
        the API URL (``https://app.pipefy.com`` for Pipefy's cloud, the API URL without ``/graphql``
        for a single-tenant domain or the sandbox)."""
        return self.settings.web_url or web_url_for(self.settings.api_url)

    def card_url(self, card_id: str | int) -> str:
        return card_url(card_id, self.web_url)

    def pipe_url(self, pipe_id: str | int) -> str:
        return pipe_url(pipe_id, self.web_url)

    def table_url(self, table_id: str | int) -> str:
        return table_url(table_id, self.web_url)


class PipefyAsyncHook(PipefyHook):
    """The async twin for triggers: httpx under gql, ``await``-ed rate limiting, never blocking the event loop.

    :param pipefy_conn_id: the ``pipefy`` connection to use.
    """

    _aclient: PipefyAsyncClient | None = None

    async def aclient(self) -> PipefyAsyncClient:
        """The async client, built once: the connection read and the limiter's store opened off the loop."""
        if self._aclient is None:
            settings = self.read_settings(await self.aget_connection(self.pipefy_conn_id))
            self._aclient = await build_async_client(settings, self.timeout, on_secret=_mask)
        return self._aclient

    async def aexecute(self, document: DocumentNode, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a (read) document, retried in place on transient failures as the sync hook's reads are."""
        return await (await self.aclient()).aexecute(document, variables)

    async def aget_card(self, card_id: str | int) -> dict[str, Any]:
        return await (await self.aclient()).aget_card(card_id)

    async def aphase_cards(self, phase_id: str | int, limit: int = 500) -> list[dict[str, Any]]:
        return await (await self.aclient()).aphase_cards(phase_id, limit)

