"""A deferrable sensor resumed by a real triggerer: ``airflow standalone`` (scheduler, dag processor,
triggerer, API server) runs a DAG whose sensor defers; the card moves; the triggerer, importing the
trigger from the installed package, wakes the task and the run succeeds."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.e2e.conftest import StandaloneAirflow, sandbox_connections

pytestmark = pytest.mark.e2e

DAG_FILE = '''
import pendulum
from airflow.sdk import DAG
from airflow_provider_crm.sensors.pipefy import PipefyCardPhaseSensor

with DAG(dag_id="crm_triggerer_check", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    PipefyCardPhaseSensor(task_id="wait_for_doing", card_id="{{ dag_run.conf['card_id'] }}",
                          target_phases=["Doing"], deferrable=True, poke_interval=2)
'''


def test_deferred_sensor_is_resumed_by_the_triggerer(tmp_path, sandbox):
    info = sandbox.info()
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "crm_triggerer_check.py").write_text(DAG_FILE)
    card_id = requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()["cards"][0]["id"]
    with StandaloneAirflow(tmp_path, dags, sandbox_connections(info)) as airflow:
        airflow.wait_for_dags("crm_triggerer_check")
        airflow.cli("dags", "unpause", "crm_triggerer_check")
        trigger = airflow.cli("dags", "trigger", "crm_triggerer_check", "--conf", json.dumps({"card_id": card_id}),
                              "-o", "json")
        assert trigger.returncode == 0, trigger.stderr[-2000:]
        run_id = json.loads(trigger.stdout.strip().splitlines()[-1])[0]["dag_run_id"]
        deadline = time.monotonic() + 240

        def task_state() -> str:
            rows = airflow.query("SELECT state FROM task_instance WHERE dag_id = 'crm_triggerer_check' "
                                 "AND run_id = ?", run_id)
            return (rows[0][0] or "") if rows else ""

        while task_state() != "deferred":
            assert time.monotonic() < deadline, airflow.tail()
            time.sleep(2)
        # the task left its worker slot; only the triggerer is watching the card now. Give the worker
        # process time to report its exit first: a trigger firing within that moment meets a known race
        # in Airflow's scheduler ("task state changed externally").
        time.sleep(10)
        hook_headers = {"Authorization": "Bearer sandbox-pipefy-token"}
        move = {"query": "mutation($i: MoveCardToPhaseInput!) { moveCardToPhase(input: $i) { card { id } } }",
                "variables": {"i": {"card_id": card_id, "destination_phase_id": "3012"}}}
        requests.post(info["pipefy_url"], json=move, headers=hook_headers, timeout=10).raise_for_status()
        while task_state() != "success":
            assert time.monotonic() < deadline and task_state() not in ("failed", "upstream_failed"), airflow.tail()
            time.sleep(2)
        trigger_logs = list(airflow.home.joinpath("logs").rglob("*.log.trigger.*.log"))
        fired = "".join(p.read_text() for p in trigger_logs)
        assert "Trigger fired event" in fired and "'phase': 'Doing'" in fired
