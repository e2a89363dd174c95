from __future__ import annotations

import json

import pytest


def point_connections(monkeypatch: pytest.MonkeyPatch, info: dict) -> dict:
    """Both default connections pointed at a sandbox (its ``info()``), each with an in-memory limiter."""
    monkeypatch.setenv("AIRFLOW_CONN_PIPEFY_DEFAULT", json.dumps({
        "conn_type": "pipefy", "host": info["pipefy_url"], "password": "sandbox-pipefy-token",
        "extra": {"rate_limit_store": "memory"}}))
    monkeypatch.setenv("AIRFLOW_CONN_PIPEDRIVE_DEFAULT", json.dumps({
        "conn_type": "pipedrive", "host": info["pipedrive_url"], "password": "sandbox-pipedrive-token",
        "extra": {"rate_limit_store": "memory", "plan": "ultimate", "seats": 5}}))
    return info


@pytest.fixture
def connections(monkeypatch, sandbox):
    """Both default connections pointed at the sandbox, each test with its own in-memory limiter."""
    return point_connections(monkeypatch, sandbox.info())


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


@pytest.fixture
def context():
    def make(start=None, end=None):
        return {"ti": FakeTI(), "data_interval_start": start, "data_interval_end": end, "outlet_events": None}

    return make
