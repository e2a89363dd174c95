"""A Pipefy connection, read and validated once into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_crm.clients.pipefy.policy import DEFAULT_PLAN, PLANS
from airflow_provider_crm.clients.pipefy.values import DATE_FORMATS, DEFAULT_DATE_FORMAT
from airflow_provider_crm.common.errors import CrmConfigError
from airflow_provider_crm.common.settings import ConnectionReader

DEFAULT_API_URL = "https://api.pipefy.com/graphql"
DEFAULT_OAUTH_TOKEN_URL = "https://app.pipefy.com/oauth/token"
DEFAULT_PAGE_SIZE = 50  # Pipefy's documented page size ("each request returns only 50 records")


@dataclass(frozen=True)
class PipefySettings:
    """What a Pipefy client needs from a connection. ``conn_id`` only names the connection in errors.

    :param date_format: how date fields are written: ``dd/mm/yyyy`` (default) or ``yyyy-mm-dd``.
    :param page_size: ``first`` of each page read (default 50, Pipefy's documented size).
    """

    conn_id: str
    api_url: str = DEFAULT_API_URL
    token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    oauth_token_url: str = DEFAULT_OAUTH_TOKEN_URL
    plan: str = DEFAULT_PLAN
    requests_per_30s: int | None = None
    monthly_quota: int | None = None
    rate_limit_store: str | None = None
    web_url: str | None = None
    date_format: str = DEFAULT_DATE_FORMAT
    page_size: int = DEFAULT_PAGE_SIZE

    @property
    def limiter_key(self) -> str:
        """The credential the limits belong to: a service account is keyed by its client id."""
        return f"sa:{self.client_id}" if self.client_id else str(self.token)

    @classmethod
    def from_connection(cls, conn_id: str, conn: Any) -> PipefySettings:
        """Read a connection (``host``, ``password``, extras). Errors name the connection and field, never a secret."""
        reader = ConnectionReader.for_connection(conn_id, "pipefy", conn)
        client_id = reader.text("client_id")
        client_secret = reader.text("client_secret")
        token = (conn.password or "").strip() or None
        if client_id and not client_secret:
            raise CrmConfigError(conn_id, "client_secret", "is required when client_id is set")
        if client_secret and not client_id:
            raise CrmConfigError(conn_id, "client_id", "is required when client_secret is set")
        if not token and not client_id:
            raise CrmConfigError(conn_id, "password",
                                 "is empty: set a Pipefy token, or a service account's client_id and client_secret")
        host = (conn.host or "").strip()
        if host and "://" not in host:
            host = f"https://{host}"
        web_url = reader.text("web_url")
        return cls(
            conn_id=conn_id,
            api_url=reader.url("host", host, DEFAULT_API_URL),
            token=token,
            client_id=client_id,
            client_secret=client_secret,
            oauth_token_url=reader.url("oauth_token_url", reader.text("oauth_token_url"), DEFAULT_OAUTH_TOKEN_URL),
            plan=reader.choice("plan", PLANS, DEFAULT_PLAN),
            requests_per_30s=reader.positive_int("requests_per_30s"),
            monthly_quota=reader.positive_int("monthly_quota"),
            rate_limit_store=reader.store(),
            web_url=reader.url("web_url", web_url, web_url) if web_url else None,
            date_format=reader.choice("date_format", tuple(DATE_FORMATS), DEFAULT_DATE_FORMAT),
            page_size=reader.positive_int("page_size") or DEFAULT_PAGE_SIZE,
        )
