"""The API-server middleware behind the connection list's Test button (airflow_provider_crm/plugins.py):
a CRM connection's test with port 0 reaches Airflow without a port; everything else unchanged."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from airflow_provider_crm.plugins import ConnectionTestPortMiddleware, CrmProviderPlugin


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"body": json.loads(body) if body else None, "length": request.headers.get("content-length")})


@pytest.fixture
def client() -> TestClient:
    app = Starlette(routes=[Route("/api/v2/connections/test", echo, methods=["POST"]),
                            Route("/api/v2/connections", echo, methods=["POST"])])
    app.add_middleware(ConnectionTestPortMiddleware)
    return TestClient(app)


BODY = {"connection_id": "pd", "conn_type": "pipedrive", "host": "https://acme.pipedrive.com", "password": "***",
        "port": 0, "extra": "{}"}


@pytest.mark.parametrize("conn_type", ["pipedrive", "pipefy"])
@pytest.mark.parametrize("port", [0, "0", ""])
def test_port_zero_of_a_crm_connection_is_dropped(client, conn_type, port):
    answer = client.post("/api/v2/connections/test", json={**BODY, "conn_type": conn_type, "port": port}).json()
    assert "port" not in answer["body"]
    assert {k: v for k, v in BODY.items() if k not in ("port", "conn_type")}.items() <= answer["body"].items()
    assert int(answer["length"]) == len(json.dumps(answer["body"]).encode())


@pytest.mark.parametrize("path, body", [
    ("/api/v2/connections/test", {**BODY, "conn_type": "http"}),  # another provider's type
    ("/api/v2/connections/test", {**BODY, "port": 8443}),  # a real port is compared by Airflow as before
    ("/api/v2/connections", BODY),  # creating a connection: untouched
])
def test_other_requests_pass_unchanged(client, path, body):
    assert client.post(path, json=body).json()["body"] == body


def test_a_body_that_is_not_json_passes(client):
    answer = client.post("/api/v2/connections/test", content=b"", headers={"content-type": "application/json"})
    assert answer.json()["body"] is None


def test_the_plugin_declares_the_middleware():
    assert [m["middleware"] for m in CrmProviderPlugin.fastapi_root_middlewares] == [ConnectionTestPortMiddleware]
