"""Pipefy's rate limits, from its help centre (../shared/api-notes): 500 requests per 30 s per token,
a 300 s pause after a refusal, and each plan's monthly API-call quota."""

from __future__ import annotations

from collections.abc import Mapping

from airflow_provider_crm.common.ratelimit.policy import (
    ALL_KINDS,
    DEFAULT_SAFETY,
    Allowance,
    LimitPolicy,
    Window,
    scaled,
)

SERVICE = "pipefy"
WINDOW_SECONDS = 30
REQUESTS_PER_WINDOW = 500
BLOCK_SECONDS = 300.0
MONTHLY_QUOTA: dict[str, int | None] = {"starter": 20, "business": 500, "enterprise": 10_000, "unlimited": None}
PLANS = tuple(MONTHLY_QUOTA)  # every name a connection may give (the form's choices)
DEFAULT_PLAN = "unlimited"


def pipefy_policy(plan: str | None = None, *, overrides: Mapping[str, int | None] | None = None,
                  safety: float = DEFAULT_SAFETY, conn_id: str | None = None) -> LimitPolicy:
    """The limits of one Pipefy token (or service account).

    :param plan: the organisation's plan; default unlimited.
    :param overrides: ``requests_per_30s``, ``monthly_quota``.
    :param safety: fraction of the window limit used.
    :param conn_id: the connection, named in configuration errors.
    """
    given = {k: int(v) for k, v in (overrides or {}).items() if v is not None}
    plan = (plan or DEFAULT_PLAN).lower()
    if plan not in MONTHLY_QUOTA:
        # imported here: get_provider_info reads PLANS while Airflow loads its configuration, and the
        # errors module imports Airflow
        from airflow_provider_crm.common.errors import CrmConfigError

        raise CrmConfigError(conn_id or SERVICE, "plan", f"must be one of {', '.join(MONTHLY_QUOTA)}")
    per_window = given.get("requests_per_30s", REQUESTS_PER_WINDOW)
    quota = given.get("monthly_quota", MONTHLY_QUOTA[plan])
    return LimitPolicy(
        SERVICE, plan, (Window("requests", scaled(per_window, safety), WINDOW_SECONDS, ALL_KINDS),),
        (Allowance("monthly call quota", quota, "month", ALL_KINDS, by_cost=False, hard=True),),
        block_seconds=BLOCK_SECONDS,
    )
