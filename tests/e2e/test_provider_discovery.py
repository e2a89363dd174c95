"""A real Airflow finds the provider, its connection types and their forms."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_airflow_lists_and_describes_the_provider(airflow_env):
    listed = airflow_env.run("providers", "list", "-o", "json")
    packages = {p["package_name"] for p in json.loads(listed.stdout)}
    assert "airflow-provider-crm" in packages

    described = airflow_env.run("providers", "get", "airflow-provider-crm", "-o", "json")
    info = json.loads(described.stdout)
    info = info[0] if isinstance(info, list) else info
    assert info["Provider"] == "airflow-provider-crm" or "airflow-provider-crm" in described.stdout


def test_providers_manager_shows_both_connection_forms(airflow_env):
    probe = """
import json
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
hooks = pm.hooks
out = {
  "hooks": {t: (hooks[t].hook_class_name, hooks[t].connection_id_attribute_name) for t in ("pipefy", "pipedrive") if hooks.get(t)},
  "widgets": sorted(k for k in pm.connection_form_widgets if k.startswith(("extra__pipefy__", "extra__pipedrive__"))),
  "secret": sorted(k for k, w in pm.connection_form_widgets.items() if w.is_sensitive and "pipe" in k),
  "behaviour": {t: pm.field_behaviours.get(t) for t in ("pipefy", "pipedrive")},
}
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", probe], env=airflow_env.env, capture_output=True, text=True,
                          timeout=120, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["hooks"]["pipefy"] == ["airflow_provider_crm.hooks.pipefy.PipefyHook", "pipefy_conn_id"]
    assert out["hooks"]["pipedrive"] == ["airflow_provider_crm.hooks.pipedrive.PipedriveHook", "pipedrive_conn_id"]
    for name in ("client_id", "client_secret", "oauth_token_url", "plan", "requests_per_30s", "monthly_quota",
                 "rate_limit_store", "web_url"):
        assert f"extra__pipefy__{name}" in out["widgets"]
    for name in ("client_id", "client_secret", "refresh_token", "company_domain", "plan", "seats",
                 "requests_per_2s", "daily_token_budget", "rate_limit_store"):
        assert f"extra__pipedrive__{name}" in out["widgets"]
    assert out["secret"] == ["extra__pipedrive__client_secret", "extra__pipedrive__refresh_token",
                             "extra__pipefy__client_secret"]
    pipefy = out["behaviour"]["pipefy"]
    assert "login" in pipefy["hidden_fields"]
    assert pipefy["relabeling"]["host"] == "API URL"
    assert pipefy["placeholders"]["extra__pipefy__oauth_token_url"] == "https://app.pipefy.com/oauth/token"
    assert out["behaviour"]["pipedrive"]["relabeling"]["password"] == "API token"


@pytest.mark.parametrize(
    ("conn_id", "conn_type", "extra"),
    [
        ("pipefy_cli", "pipefy", {"plan": "business"}),
        ("pipedrive_cli", "pipedrive", {"plan": "growth", "seats": 3, "company_domain": "acme"}),
    ],
)
def test_connections_can_be_added_with_the_cli(airflow_env, conn_id, conn_type, extra):
    airflow_env.run("connections", "add", conn_id, "--conn-type", conn_type, "--conn-password", "not-a-real-token",
                    "--conn-extra", json.dumps(extra))
    got = airflow_env.run("connections", "get", conn_id, "-o", "json")
    conn = json.loads(got.stdout)
    conn = conn[0] if isinstance(conn, list) else conn
    assert conn["conn_type"] == conn_type
    stored = conn["extra_dejson"]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert {k: str(v) for k, v in stored.items()} == {k: str(v) for k, v in extra.items()}
