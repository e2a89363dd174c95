"""The connection list's Test button as Airflow 3.3.2 sends it, through Airflow's own REST API
(``POST /api/v2/connections/test``): a connection created as the form creates ours (no port, the field
is hidden) is tested with ``port: 0`` and the stored token. Airflow's API app runs in a subprocess
with a migrated metadata database, the plugins installed by the provider's entry point included."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from crm_sandbox.core import SandboxConfig
from crm_sandbox.server import SandboxServer
from tests.e2e.conftest import AirflowEnv

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCRIPT = textwrap.dedent('''
    import json, sys
    from fastapi.testclient import TestClient
    from airflow.api_fastapi.app import create_app

    info = json.loads(sys.argv[1])
    client = TestClient(create_app())
    results = {}
    for conn_id, conn_type, host, token in (
            ("pd_form", "pipedrive", info["pipedrive_url"], "sandbox-pipedrive-token"),
            ("pf_form", "pipefy", info["pipefy_url"], "sandbox-pipefy-token")):
        client.delete(f"/api/v2/connections/{conn_id}")
        # what the form posts: no port (hidden), the token in the password field
        made = client.post("/api/v2/connections", json={"connection_id": conn_id, "conn_type": conn_type,
                                                        "host": host, "password": token})
        assert made.status_code == 201, made.text
        listed = client.get(f"/api/v2/connections/{conn_id}").json()
        # what the list's Test button posts: the listed fields, the masked password, Number(port)
        body = {"conn_type": listed["conn_type"], "connection_id": conn_id, "description": "",
                "extra": listed["extra"] or "{}", "host": listed["host"] or "", "login": "",
                "password": listed["password"] or "", "port": 0, "schema": ""}
        answer = client.post("/api/v2/connections/test", json=body)
        moved = client.post("/api/v2/connections/test", json={**body, "host": "https://elsewhere.example"})
        results[conn_type] = {"stored_port": listed["port"], "status": answer.status_code, "body": answer.json(),
                              "elsewhere": moved.status_code}
    print("RESULT " + json.dumps(results))
''')


def test_test_button_with_port_zero_works(airflow_env: AirflowEnv, tmp_path):
    with SandboxServer(SandboxConfig()) as sandbox:
        env = {**airflow_env.env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True"}
        proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(sandbox.info())], env=env,
                              capture_output=True, text=True, timeout=240, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULT "):])
    for conn_type, result in results.items():
        assert result["stored_port"] is None, conn_type
        assert result["status"] == 200 and result["body"]["status"] is True, (conn_type, result)
        assert "Connected to" in result["body"]["message"], result
        # another host with the stored token is still refused by Airflow
        assert result["elsewhere"] == 400, result
    # the token never comes back in an answer
    assert "sandbox-pipedrive-token" not in proc.stdout and "sandbox-pipefy-token" not in proc.stdout
