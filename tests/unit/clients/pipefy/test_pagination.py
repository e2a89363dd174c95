"""Relay pagination as the client reads it, with HTTP mocked."""

from __future__ import annotations

import json

import responses

from airflow_provider_crm.hooks.pipefy import PipefyHook


@responses.activate
def test_pipefy_relay_pagination_requests_at_most_50(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PF", json.dumps({"conn_type": "pipefy", "password": "tok-123456",
                                                      "host": "https://pf.test/graphql",
                                                      "extra": {"rate_limit_store": "memory"}}))
    page = lambda ids, more, cursor: {"data": {"allCards": {  # noqa: E731
        "pageInfo": {"hasNextPage": more, "endCursor": cursor}, "edges": [{"node": {"id": i}} for i in ids]}}}
    responses.post("https://pf.test/graphql", json=page(["1", "2"], True, "opaque=="))
    responses.post("https://pf.test/graphql", json=page(["3"], False, None))
    assert [c["id"] for c in PipefyHook("pf").iter_pipe_cards("301")] == ["1", "2", "3"]
    bodies = [json.loads(c.request.body) for c in responses.calls]
    assert all(b["variables"]["first"] == 50 for b in bodies)
    assert bodies[1]["variables"]["after"] == "opaque=="
