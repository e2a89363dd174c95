"""A deferrable sensor resumed by a real triggerer: ``airflow standalone`` (scheduler, dag processor,
triggerer, API server) runs a DAG whose sensor defers; the card moves; the triggerer, importing the
trigger from the installed package, wakes the task and the run succeeds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

DAG_FILE = '''
import pendulum
from airflow.sdk import DAG
from airflow_provider_crm.sensors.pipefy import PipefyCardPhaseSensor

with DAG(dag_id="crm_triggerer_check", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    PipefyCardPhaseSensor(task_id="wait_for_doing", card_id="{{ dag_run.conf['card_id'] }}",
                          target_phases=["Doing"], deferrable=True, poke_interval=2)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deferred_sensor_is_resumed_by_the_triggerer(tmp_path, sandbox):
    info = sandbox.info()
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "crm_triggerer_check.py").write_text(DAG_FILE)
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__TRIGGERER__TRIGGERER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CRM__RATE_LIMIT_DIR": str(tmp_path / "ratelimit"),
        "AIRFLOW_CONN_PIPEFY_DEFAULT": json.dumps({"conn_type": "pipefy", "host": info["pipefy_url"],
                                                   "password": "sandbox-pipefy-token"}),
    }
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    card_id = requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()["cards"][0]["id"]
    log_path = tmp_path / "standalone.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(bin_dir / "airflow"), "standalone"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    airflow = str(bin_dir / "airflow")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=120)

    try:
        deadline = time.monotonic() + 240
        while "crm_triggerer_check" not in cli("dags", "list").stdout:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(3)
        cli("dags", "unpause", "crm_triggerer_check")
        trigger = cli("dags", "trigger", "crm_triggerer_check", "--conf", json.dumps({"card_id": card_id}),
                      "-o", "json")
        assert trigger.returncode == 0, trigger.stderr[-2000:]
        run_id = json.loads(trigger.stdout.strip().splitlines()[-1])[0]["dag_run_id"]

        def task_state() -> str:
            out = cli("tasks", "states-for-dag-run", "crm_triggerer_check", run_id, "-o", "json").stdout
            try:
                return json.loads(out.strip().splitlines()[-1])[0]["state"] or ""
            except (ValueError, IndexError, KeyError):
                return ""

        while task_state() != "deferred":
            assert time.monotonic() < deadline, log_path.read_text()[-6000:]
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
            assert time.monotonic() < deadline and task_state() not in ("failed", "upstream_failed"), \
                log_path.read_text()[-6000:]
            time.sleep(2)
        trigger_logs = list((tmp_path / "home" / "logs").rglob("*.log.trigger.*.log"))
        fired = "".join(p.read_text() for p in trigger_logs)
        assert "Trigger fired event" in fired and "'phase': 'Doing'" in fired
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
