"""Pipedrive's rate-limit policy: endpoint costs from the published specs, headers it reads."""

from __future__ import annotations

from airflow_provider_crm.clients.pipedrive.policy import TOKEN_BUDGET, pipedrive_policy, token_cost


def test_token_costs_come_from_the_spec():
    assert token_cost("GET", "/deals", "v2") == 10
    assert token_cost("GET", "/deals/42", "v2") == 1
    assert token_cost("POST", "/deals", "v2") == 5
    assert token_cost("GET", "/persons/search", "v2") == 20
    assert token_cost("GET", "/notes", "v1") == 20
    assert token_cost("GET", "/no/such/endpoint", "v2") == 10


def test_the_daily_headers_state_the_budget_and_what_is_left():
    signals = pipedrive_policy("lite").read_headers({
        "x-ratelimit-remaining": "3", "x-ratelimit-reset": "2", "x-daily-ratelimit-token-limit": "1000",
        "x-daily-ratelimit-token-remaining": "900", "x-daily-requests-left": "40"})
    assert (signals.remaining, signals.reset) == (3.0, 2.0)
    assert signals.stated == {TOKEN_BUDGET: 1000}
    assert signals.left == {TOKEN_BUDGET: 900.0, "daily POST/PUT allowance": 40.0}
    assert pipedrive_policy("lite").read_headers({"retry-after": "5"}).reset == 5.0
