"""Each example DAG runs green in a real Airflow (``airflow dags test``, SQLite) against the sandbox."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e

DAG_IDS = sorted(m for p in (REPO / "dags").glob("*.py") for m in re.findall(r'dag_id="([^"]+)"', p.read_text()))


@pytest.fixture
def sandbox_env(airflow_env, sandbox, tmp_path):
    info = sandbox.info()
    return {
        "CRM_DEMO_OUTPUT": str(tmp_path / "output"),
        "AIRFLOW_CONN_PIPEFY_DEFAULT": json.dumps({"conn_type": "pipefy", "host": info["pipefy_url"],
                                                   "password": "sandbox-pipefy-token"}),
        "AIRFLOW_CONN_PIPEDRIVE_DEFAULT": json.dumps({"conn_type": "pipedrive", "host": info["pipedrive_url"],
                                                      "password": "sandbox-pipedrive-token",
                                                      "extra": {"plan": "ultimate", "seats": 5}}),
    }


def test_example_dags_import_cleanly(airflow_env):
    assert len(DAG_IDS) >= 4
    proc = airflow_env.run("dags", "list-import-errors", "--local", "-o", "json")  # parse here: the DB is empty
    assert "No data found" in proc.stdout or json.loads(proc.stdout.strip().splitlines()[-1]) == []


def _run(airflow_env, sandbox_env, dag_id, conf=None):
    logical = time.strftime("%Y-%m-%dT00:00:00+00:00", time.gmtime())
    args = ["dags", "test", dag_id, logical]
    if conf:
        args += ["--conf", json.dumps(conf)]
    proc = airflow_env.run(*args, env=sandbox_env, check=False, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "state=failed" not in output.lower() or "upstream_failed" in output.lower(), output[-5000:]
    return output


def test_nightly_exports_write_every_file(airflow_env, sandbox_env, sandbox, tmp_path):
    _run(airflow_env, sandbox_env, "crm_nightly_exports")
    out = tmp_path / "output"
    deals = [json.loads(line) for line in next((out / "pipedrive" / "deals").glob("*.jsonl")).read_text().splitlines()]
    state = requests.get(f"{sandbox.url}/pipedrive/_state/deals", timeout=10).json()
    live = {d["id"] for d in state if not d["is_deleted"] and not d["is_archived"]}
    deleted = {d["id"] for d in state if d["is_deleted"]}
    assert {d["id"] for d in deals if not d.get("_deleted")} == live
    # the DAG asks for tombstones: every deal deleted in the sandbox's seed appears once, marked
    tombstones = [d["id"] for d in deals if d.get("_deleted")]
    assert deleted and sorted(tombstones) == sorted(deleted)
    assert all("Onboarding plan" in d for d in deals)  # custom fields by name, not hash
    assert not any(len(k) == 40 for d in deals[:20] for k in d)
    cards = (out / "pipefy" / "onboarding").glob("*.jsonl")
    pipefy_state = requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()
    in_pipe = [c for c in pipefy_state["cards"] if str(c["pipe"]["id"]) == "301"]
    assert in_pipe and sum(1 for f in cards for _ in f.open()) == len(in_pipe)


def test_contacts_upsert_writes_rejects_and_creates_nothing_twice(airflow_env, sandbox_env, sandbox, tmp_path):
    _run(airflow_env, sandbox_env, "crm_contacts_upsert")
    persons = requests.get(f"{sandbox.url}/pipedrive/_state/persons", timeout=10).json()
    _run(airflow_env, sandbox_env, "crm_contacts_upsert")  # a second run: updates or leaves alone
    again = requests.get(f"{sandbox.url}/pipedrive/_state/persons", timeout=10).json()
    assert len(again) == len(persons)
    emails = [e["value"] for p in again for e in p.get("emails") or []]
    assert emails.count("ana.silva@example.com") == 1
    rejects = next((tmp_path / "output" / "rejects").glob("contacts-*.jsonl")).read_text().splitlines()
    reasons = [json.loads(r)["error"] for r in rejects]
    assert any("'Newsletter' is not one of its options" in r for r in reasons)
    assert any("'not-a-number' is not a number" in r for r in reasons)


def test_mail_export(airflow_env, sandbox_env, tmp_path):
    _run(airflow_env, sandbox_env, "crm_mail_export")
    threads = [json.loads(line) for line in
               next((tmp_path / "output" / "pipedrive" / "mail").glob("inbox-*.jsonl")).read_text().splitlines()]
    assert threads and all(len(t["messages"]) == t["message_count"] for t in threads)


def test_won_deals_become_onboarding_cards_and_deals_get_a_note(airflow_env, sandbox_env, sandbox):
    token = {"x-api-token": "sandbox-pipedrive-token"}
    for deal_id in (2, 6):
        requests.patch(f"{sandbox.url}/pipedrive/api/v2/deals/{deal_id}", json={"status": "won"}, headers=token,
                       timeout=10).raise_for_status()
    _run(airflow_env, sandbox_env, "crm_won_deals_onboarding", {"simulate_onboarding_team": True, "max_deals": 2})
    cards = requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()["cards"]
    onboarded = [c for c in cards if any(f["field"]["id"] == "pipedrive_deal_id" for f in c["fields"])]
    assert len(onboarded) == 2 and all(c["current_phase"]["name"] == "Done" for c in onboarded)
    notes = requests.get(f"{sandbox.url}/pipedrive/_state/notes", timeout=10).json()
    assert {n["deal_id"] for n in notes if n["content"].startswith("Onboarding finished")} == {2, 6}
