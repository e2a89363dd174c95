"""Pipedrive's rate limits, from its docs (../shared/api-notes) and published OpenAPI specs: plans, the
burst window per plan and auth type, the search window, the company's daily token budget, the daily
POST/PUT allowance of API tokens, each endpoint's token cost, and the headers that state what is left."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from airflow_provider_crm.common.ratelimit.policy import (
    ALL_KINDS,
    Allowance,
    LimitPolicy,
    Signals,
    Window,
    number,
    scaled,
)

SERVICE = "pipedrive"
# (API token, OAuth) requests per 2-second window
BURST: dict[str, tuple[int, int]] = {
    "lite": (20, 80),
    "growth": (40, 160),
    "premium": (100, 400),
    "ultimate": (120, 480),
}
# the plans' newer names
PLAN_ALIASES = {"essential": "lite", "advanced": "growth", "professional": "premium", "enterprise": "ultimate"}
PLANS = (*BURST, *PLAN_ALIASES)  # every name a connection may give (the form's choices)
DEFAULT_PLAN = "lite"
BUDGET_MULTIPLIER = {"lite": 1, "growth": 2, "premium": 5, "ultimate": 7}
BASE_DAILY_TOKENS = 30_000
SEARCH_PER_2S = 10
DAILY_WRITES = 10_000  # POST/PUT per user per UTC day with an API token ("fair use")
WINDOW_SECONDS = 2
TOKEN_BUDGET = "daily token budget"  # company-wide (x-daily-ratelimit-token-limit / -remaining)
DAILY_WRITES_NAME = "daily POST/PUT allowance"


def normalise_plan(plan: str) -> str:
    plan = plan.lower()
    return PLAN_ALIASES.get(plan, plan)


@dataclass(frozen=True)
class PipedrivePolicy(LimitPolicy):
    """Pipedrive's limits; its answers also state the daily token budget and the writes left."""

    def read_headers(self, headers: Mapping[str, str]) -> Signals:
        signals = super().read_headers(headers)
        left = {name: value for header, name in (("x-daily-ratelimit-token-remaining", TOKEN_BUDGET),
                                                 ("x-daily-requests-left", DAILY_WRITES_NAME))
                if (value := number(headers.get(header))) is not None}
        stated = number(headers.get("x-daily-ratelimit-token-limit"))
        return Signals(reset=signals.reset, remaining=signals.remaining, limit=signals.limit, left=left,
                       stated={TOKEN_BUDGET: int(stated)} if stated else {})


# The whole window: our slots count from each answer, so our own requests can never put more in the
# server's window than ours holds (docs/rate-limits.md). A margin bought nothing but 5 % of the rate;
# it was kept while slots were stamped when taken, which met a 429 in a loaded Celery run.
SAFETY = 1.0


def pipedrive_policy(plan: str | None = None, *, auth_type: str = "token", seats: int = 1,
                     overrides: Mapping[str, int | None] | None = None, safety: float = SAFETY,
                     conn_id: str | None = None) -> PipedrivePolicy:
    """The limits of one Pipedrive token.

    :param plan: the company's plan (or its newer name); default Lite.
    :param auth_type: ``token`` or ``oauth`` (OAuth apps get four times the burst, and no daily
        POST/PUT allowance).
    :param seats: paid seats (the daily token budget scales with them).
    :param overrides: ``requests_per_2s``, ``daily_token_budget``.
    :param safety: fraction of each window limit used.
    :param conn_id: the connection, named in configuration errors.
    """
    given = {k: int(v) for k, v in (overrides or {}).items() if v is not None}
    plan = normalise_plan(plan or DEFAULT_PLAN)
    if plan not in BURST:
        # imported here: get_provider_info reads PLANS while Airflow loads its configuration, and the
        # errors module imports Airflow
        from airflow_provider_crm.common.errors import CrmConfigError

        raise CrmConfigError(conn_id or SERVICE, "plan", f"must be one of {', '.join(BURST)}")
    burst = given.get("requests_per_2s", BURST[plan][1 if auth_type == "oauth" else 0])
    budget = given.get("daily_token_budget", BASE_DAILY_TOKENS * BUDGET_MULTIPLIER[plan] * seats)
    allowances = [Allowance(TOKEN_BUDGET, budget, "day", ALL_KINDS, by_cost=True, hard=False, stated=True)]
    if auth_type == "token":
        allowances.append(Allowance(DAILY_WRITES_NAME, DAILY_WRITES, "day", frozenset({"write"}), by_cost=False,
                                    hard=False))
    windows = (Window("burst", scaled(burst, safety), WINDOW_SECONDS, ALL_KINDS),
               Window("search", scaled(SEARCH_PER_2S, safety), WINDOW_SECONDS, frozenset({"search"})))
    return PipedrivePolicy(SERVICE, plan, windows, tuple(allowances), block_seconds=WINDOW_SECONDS)


# -- endpoint costs (x-token-cost from the published OpenAPI specs) -----------------------------------
_COSTS: dict[str, list[tuple[str, str, int]]] | None = None


def _load_costs() -> dict[str, list[tuple[str, str, int]]]:
    global _COSTS
    if _COSTS is None:
        raw = json.loads(resources.files(__package__).joinpath("costs.json").read_text())
        _COSTS = {version: [(m, p, int(c)) for m, p, c in rows] for version, rows in raw.items()}
    return _COSTS


def _template_matches(template: str, path: str) -> bool:
    t_parts, p_parts = template.strip("/").split("/"), path.strip("/").split("/")
    if len(t_parts) != len(p_parts):
        return False
    return all(t == p or (t.startswith("{") and t.endswith("}")) for t, p in zip(t_parts, p_parts, strict=True))


def token_cost(method: str, path: str, version: str = "v2") -> int:
    """Tokens a request costs against the daily budget.

    :param method: HTTP method.
    :param path: path after ``/api/v1`` or ``/api/v2``, concrete (``/deals/12``) or a template.
    :param version: ``v1`` or ``v2``.

    Exact templates win over ones with placeholders; unknown operations cost 10 (a list's price),
    which errs on the safe side for reads and matches writes' typical cost.
    """
    method = method.upper()
    path = "/" + path.split("?", 1)[0].strip("/")
    best: tuple[int, int] | None = None
    for m, template, cost in _load_costs().get(version, []):
        if m != method or not _template_matches(template, path):
            continue
        placeholders = template.count("{")
        if best is None or placeholders < best[0]:
            best = (placeholders, cost)
    return best[1] if best else 10
