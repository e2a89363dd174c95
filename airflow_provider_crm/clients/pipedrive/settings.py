"""A Pipedrive connection's settings, read once and frozen, and the callbacks a host (the Airflow hook)
gives the client for what needs it: keeping a rotated OAuth refresh token, masking secrets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from airflow_provider_crm.clients.pipedrive.policy import PipedrivePolicy, pipedrive_policy

DEFAULT_BASE_URL = "https://api.pipedrive.com"
DEFAULT_OAUTH_TOKEN_URL = "https://oauth.pipedrive.com/oauth/token"


@dataclass(frozen=True)
class PipedriveSettings:
    """One connection: where, which credentials, which limits.

    :param conn_id: names the connection in errors.
    :param base_url: the API's base URL (an OAuth answer's ``api_domain`` replaces it unless
        ``host_given``).
    :param token: the API token, or None with OAuth (``client_id``, ``client_secret``, ``refresh_token``).
    """

    conn_id: str
    base_url: str = DEFAULT_BASE_URL
    token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    oauth_token_url: str = DEFAULT_OAUTH_TOKEN_URL
    host_given: bool = False
    company_domain: str | None = None
    plan: str = "lite"
    seats: int = 1
    requests_per_2s: int | None = None
    daily_token_budget: int | None = None
    rate_limit_store: str | None = None

    @property
    def auth_type(self) -> str:
        return "oauth" if self.client_id else "token"

    @property
    def limiter_key(self) -> str:
        """The credential the limits belong to (only its digest is stored)."""
        return self.token or "" if self.auth_type == "token" else f"oauth:{self.client_id}:{self.refresh_token}"

    def policy(self) -> PipedrivePolicy:
        return pipedrive_policy(
            self.plan, auth_type=self.auth_type, seats=self.seats, conn_id=self.conn_id,
            overrides={"requests_per_2s": self.requests_per_2s, "daily_token_budget": self.daily_token_budget})


def _nothing_stored() -> str | None:
    return None


def _ignore(secret: str) -> None:
    return None


@dataclass(frozen=True)
class TokenRotation:
    """What the client does with OAuth refresh tokens beyond its own memory.

    :param load: the refresh token an earlier run kept (tried before the connection's), or None.
    :param save: keep a refresh token Pipedrive rotated, for the next run.
    :param mask: have the host redact a secret from its logs.
    :param where: where ``save`` keeps it, for the message of a refused refresh.
    """

    load: Callable[[], str | None] = _nothing_stored
    save: Callable[[str], None] = _ignore
    mask: Callable[[str], None] = _ignore
    where: str = "nowhere outside this process"
