"""Under a real scheduler with Airflow's default configuration: one ``airflow standalone``
(scheduler, dag processor, triggerer, API server) for the module, whose DAGs run side by side:

- every example DAG succeeds when triggered without a logical date (CLI and REST API), and on its
  schedule;
- a deferrable sensor is handed to the triggerer, which imports the trigger from the installed
  package and wakes the task when the card moves;
- a DAG on a plain cron schedule exports incrementally over consecutive scheduled runs while records
  are changed, created and deleted between them: every change lands in exactly one run, nothing is
  missed or repeated, and the files folded together equal the sandbox's state (Pipedrive deals with
  tombstones, Pipefy cards). Airflow 3 gives cron runs an empty data interval by default; the
  exports must not care.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_crm.clients.pipedrive.export_lines import spare_processes
from crm_sandbox.core import SandboxConfig
from crm_sandbox.server import SandboxServer
from tests.e2e.conftest import REPO, StandaloneAirflow, sandbox_connections

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

STREAM_DAG = "crm_e2e_incremental"
STREAM_DAG_FILE = f'''
import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from airflow_provider_crm.operators.pipedrive import PipedriveExportOperator
from airflow_provider_crm.operators.pipefy import PipefyExportCardsOperator

OUT = os.environ["CRM_STREAM_OUTPUT"]

with DAG(dag_id="{STREAM_DAG}", schedule="* * * * *", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         catchup=False, max_active_runs=1, default_args={{"retries": 2, "retry_delay": timedelta(seconds=5)}}):
    PipedriveExportOperator(task_id="deals", entity="deals", include_deleted=True, settle_seconds=5,
                            pipedrive_conn_id="pipedrive_stream",
                            path=OUT + "/deals/{{{{ dag_run.run_after | ts_nodash }}}}.jsonl")
    PipefyExportCardsOperator(task_id="cards", pipe_id="301", settle_seconds=5, pipefy_conn_id="pipefy_stream",
                              path=OUT + "/cards/{{{{ dag_run.run_after | ts_nodash }}}}.jsonl")
'''
TRIGGERER_DAG = "crm_triggerer_check"
TRIGGERER_DAG_FILE = f'''
import pendulum
from airflow.sdk import DAG
from airflow_provider_crm.sensors.pipefy import PipefyCardPhaseSensor

with DAG(dag_id="{TRIGGERER_DAG}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         is_paused_upon_creation=False):
    PipefyCardPhaseSensor(task_id="wait_for_doing", card_id="{{{{ dag_run.conf['card_id'] }}}}",
                          target_phases=["Doing"], deferrable=True, poke_interval=2)
'''
EXAMPLE_DAGS = ("crm_contacts_upsert", "crm_mail_export", "crm_nightly_exports", "crm_won_deals_onboarding")
PIPEDRIVE = {"x-api-token": "sandbox-pipedrive-token"}
PIPEFY = {"Authorization": "Bearer sandbox-pipefy-token"}


class Airflow:
    def __init__(self, standalone: StandaloneAirflow, examples: SandboxServer, stream: SandboxServer,
                 output: Path) -> None:
        self.standalone = standalone
        self.examples = examples
        self.stream = stream
        self.output = output


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """One standalone Airflow for the module, with two sandboxes: the example DAGs' and the stream's
    (so that the example DAGs' writes are not changes the stream test has to account for)."""
    root = tmp_path_factory.mktemp("scheduler")
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    (dags / f"{STREAM_DAG}.py").write_text(STREAM_DAG_FILE)
    (dags / f"{TRIGGERER_DAG}.py").write_text(TRIGGERER_DAG_FILE)
    # the stream's answers take 50 ms: enough for its exports to read in parallel slices on the Ultimate
    # plan, so that they run through the worker process that encodes pages (export_lines.py)
    with SandboxServer(SandboxConfig()) as examples, SandboxServer(SandboxConfig(latency_ms=50)) as stream:
        env = {
            **sandbox_connections(examples.info()),
            **sandbox_connections(stream.info(), "pipefy_stream", "pipedrive_stream"),
            "CRM_DEMO_OUTPUT": str(root / "examples-output"),
            "CRM_STREAM_OUTPUT": str(root / "stream-output"),
        }
        with StandaloneAirflow(root, dags, env) as standalone:
            standalone.wait_for_dags(STREAM_DAG, TRIGGERER_DAG, *EXAMPLE_DAGS)
            standalone.wait_for_api()
            # the stream's scheduled runs go on beside the other tests from here
            assert standalone.cli("dags", "unpause", STREAM_DAG).returncode == 0
            yield Airflow(standalone, examples, stream, root / "stream-output")


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))


def _deals_state(sandbox: SandboxServer) -> dict[int, dict[str, Any]]:
    return {d["id"]: d for d in requests.get(f"{sandbox.url}/pipedrive/_state/deals", timeout=10).json()}


def _cards_state(sandbox: SandboxServer) -> dict[str, dict[str, Any]]:
    cards = requests.get(f"{sandbox.url}/pipefy/_state", timeout=10).json()["cards"]
    return {c["id"]: c for c in cards if str(c["pipe"]["id"]) == "301"}


def _pipefy(sandbox: SandboxServer, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(sandbox.info()["pipefy_url"], json={"query": query, "variables": variables},
                           headers=PIPEFY, timeout=10)
    answer.raise_for_status()
    assert "errors" not in answer.json(), answer.text
    return answer.json()["data"]


def _change_records(sandbox: SandboxServer, round_no: int) -> None:
    """What users do between two runs: edit, create and delete deals; edit and create cards."""
    base = f"{sandbox.url}/pipedrive/api/v2/deals"
    live = sorted(i for i, d in _deals_state(sandbox).items() if not d["is_deleted"] and not d["is_archived"])
    for deal_id in live[round_no * 10: round_no * 10 + 5]:
        requests.patch(f"{base}/{deal_id}", json={"title": f"Edited in round {round_no}"}, headers=PIPEDRIVE,
                       timeout=10).raise_for_status()
    for n in range(3):
        requests.post(base, json={"title": f"New in round {round_no} #{n}"}, headers=PIPEDRIVE,
                      timeout=10).raise_for_status()
    for deal_id in live[-(round_no * 2 + 2):][:2]:
        requests.delete(f"{base}/{deal_id}", headers=PIPEDRIVE, timeout=10).raise_for_status()
    cards = sorted(_cards_state(sandbox))
    for card_id in cards[round_no * 5: round_no * 5 + 3]:
        _pipefy(sandbox, "mutation($i: UpdateCardInput!) { updateCard(input: $i) { card { id } } }",
                {"i": {"id": card_id, "title": f"Edited in round {round_no}"}})
    _pipefy(sandbox, "mutation($i: CreateCardInput!) { createCard(input: $i) { card { id } } }",
            {"i": {"pipe_id": "301", "title": f"New card in round {round_no}",
                   "fields_attributes": [{"field_id": "customer_name", "field_value": f"Customer {round_no}"}]}})


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_stream(runs: list[dict[str, Any]], exported: dict[str, list[dict[str, Any]]], state: dict[Any, dict],
                  stamp: str, label: str) -> None:
    """Each run holds exactly the records whose last change falls in its range, once; folded in run
    order (tombstones removing), the files equal the state."""
    ranges = [(r["range"]["start"], r["range"]["end"]) for r in runs]
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False)), f"{label}: ranges {ranges}"
    last_end = _moment(ranges[-1][1])
    folded: dict[Any, dict[str, Any]] = {}
    for run, (start, end) in zip(runs, ranges, strict=True):
        rows = exported[run["run_id"]]
        ids = [row["id"] for row in rows]
        assert len(ids) == len(set(ids)), f"{label}: a record twice in {run['run_id']}"
        lo = _moment(start) if start else None
        expected = {i for i, rec in state.items()
                    if (lo is None or _moment(rec[stamp]) >= lo) and _moment(rec[stamp]) < _moment(end)}
        if lo is not None:  # the first run also has records deleted long ago, that the state keeps
            assert set(ids) == expected, f"{label}: run {run['run_id']} [{start}, {end}) holds {sorted(ids)}, " \
                                         f"changed in it: {sorted(expected)}"
        for row in rows:
            folded[row["id"]] = row
    final = {i for i, row in folded.items() if not row.get("_deleted")}
    live = {i for i, rec in state.items() if not rec.get("is_deleted") and not rec.get("is_archived")
            and _moment(rec[stamp]) < last_end}
    assert final == live, f"{label}: missing {sorted(live - final)}, extra {sorted(final - live)}"
    for i in final:
        assert folded[i]["title"] == state[i]["title"], f"{label}: {i} exported as an old version"


def _api_token(standalone: StandaloneAirflow) -> str:
    answer = requests.get(f"{standalone.api_url}/auth/token", timeout=10)
    answer.raise_for_status()
    return answer.json()["access_token"]


def test_example_dags_succeed_without_a_logical_date(airflow: Airflow):
    standalone = airflow.standalone
    for deal_id in (2, 6):  # what a salesperson does: the onboarding DAG then has cards to make
        requests.patch(f"{airflow.examples.url}/pipedrive/api/v2/deals/{deal_id}", json={"status": "won"},
                       headers=PIPEDRIVE, timeout=10).raise_for_status()
    triggered = {}
    for dag_id in EXAMPLE_DAGS:
        standalone.cli("dags", "unpause", dag_id)
    conf = {"crm_won_deals_onboarding": {"simulate_onboarding_team": True, "max_deals": 2}}
    for dag_id in ("crm_won_deals_onboarding", "crm_contacts_upsert"):
        proc = standalone.cli("dags", "trigger", dag_id, "--conf", json.dumps(conf.get(dag_id, {})), "-o", "json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        triggered[dag_id] = json.loads(proc.stdout.strip().splitlines()[-1])[0]["dag_run_id"]
    headers = {"Authorization": f"Bearer {_api_token(standalone)}"}
    for dag_id in ("crm_nightly_exports", "crm_mail_export"):
        for _ in range(5):  # SQLite may be locked by the scheduler for a moment: a 500 "Database error"
            answer = requests.post(f"{standalone.api_url}/api/v2/dags/{dag_id}/dagRuns",
                                   json={"logical_date": None}, headers=headers, timeout=30)
            if answer.status_code != 500:
                break
            time.sleep(3)
        assert answer.status_code == 200, answer.text
        triggered[dag_id] = answer.json()["dag_run_id"]
    for dag_id, run_id in triggered.items():
        run = standalone.wait_for_run(dag_id, run_id)
        assert run["logical_date"] is None, run
        assert run["state"] == "success", (dag_id, [standalone.task_log(dag_id, run_id, t)[-3000:] for t in
                                                    ("won_deals", "upsert_onboarding_cards", "export_deals")])
    # unpausing also started the scheduled DAGs' latest runs: they succeed too
    for dag_id in ("crm_nightly_exports", "crm_won_deals_onboarding", "crm_mail_export"):
        scheduled = [r for r in standalone.runs(dag_id) if r["run_type"] == "scheduled"]
        assert scheduled, dag_id
        for run in scheduled:
            assert standalone.wait_for_run(dag_id, run["run_id"])["state"] == "success", (dag_id, run)
    notes = requests.get(f"{airflow.examples.url}/pipedrive/_state/notes", timeout=10).json()
    assert {n["deal_id"] for n in notes if n["content"].startswith("Onboarding finished")} == {2, 6}


def test_deferred_sensor_is_resumed_by_the_triggerer(airflow: Airflow):
    standalone = airflow.standalone
    card_id = sorted(_cards_state(airflow.examples))[0]
    trigger = standalone.cli("dags", "trigger", TRIGGERER_DAG, "--conf", json.dumps({"card_id": card_id}),
                             "-o", "json")
    assert trigger.returncode == 0, trigger.stderr[-2000:]
    run_id = json.loads(trigger.stdout.strip().splitlines()[-1])[0]["dag_run_id"]
    deadline = time.monotonic() + 240

    def task_state() -> str:
        rows = standalone.query("SELECT state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                TRIGGERER_DAG, run_id)
        return (rows[0][0] or "") if rows else ""

    while task_state() != "deferred":
        assert time.monotonic() < deadline and task_state() != "failed", standalone.tail()
        time.sleep(2)
    # the task left its worker slot; only the triggerer is watching the card now. Give the worker
    # process time to report its exit first: a trigger firing within that moment meets a known race
    # in Airflow's scheduler ("task state changed externally").
    time.sleep(10)
    _pipefy(airflow.examples, "mutation($i: MoveCardToPhaseInput!) { moveCardToPhase(input: $i) { card { id } } }",
            {"i": {"card_id": card_id, "destination_phase_id": "3012"}})
    assert standalone.wait_for_run(TRIGGERER_DAG, run_id)["state"] == "success", standalone.tail()
    folder = standalone.home / "logs" / f"dag_id={TRIGGERER_DAG}" / f"run_id={run_id}"
    fired = "".join(p.read_text() for p in folder.rglob("*.log*"))
    trigger_logs = "".join(p.read_text() for p in standalone.home.joinpath("logs").rglob("*.log.trigger.*.log"))
    assert "Trigger fired event" in fired + trigger_logs and "'phase': 'Doing'" in fired + trigger_logs


def test_cron_schedule_runs_export_each_change_exactly_once(airflow: Airflow):
    standalone = airflow.standalone
    deadline = time.monotonic() + 480

    def next_finished(done: int) -> dict[str, Any]:
        while True:
            finished = [r for r in standalone.runs(STREAM_DAG) if r["state"] in ("success", "failed")]
            if len(finished) > done:
                run = finished[done]
                assert run["state"] == "success", standalone.task_log(STREAM_DAG, run["run_id"], "deals")[-4000:]
                return run
            assert standalone.alive() and time.monotonic() < deadline, standalone.tail()
            time.sleep(2)

    runs: list[dict[str, Any]] = []
    last_change = 0.0
    while len(runs) < 3 or _moment(runs[-1]["summaries"]["deals"]["range"]["end"]).timestamp() <= last_change:
        run = next_finished(len(runs))
        run["summaries"] = {t: standalone.return_value(STREAM_DAG, run["run_id"], t) for t in ("deals", "cards")}
        runs.append(run)
        if len(runs) <= 2:
            _change_records(airflow.stream, len(runs))
            last_change = time.time()

    first = runs[0]
    assert first["run_type"] == "scheduled"
    assert first["data_interval_start"] == first["data_interval_end"]  # Airflow 3's default: an empty interval
    first_log = standalone.task_log(STREAM_DAG, first["run_id"], "deals")
    assert "first_full" in first_log and "exports EVERYTHING" in first_log
    if spare_processes() > 0:
        # a task process of a real scheduler forks the page encoder, and every check below holds through
        # it: in each run that read in parallel slices (a run with nothing in its range reads one)
        assert first["summaries"]["deals"]["parallel"] > 1, first["summaries"]["deals"]
        for run in runs:
            log = standalone.task_log(STREAM_DAG, run["run_id"], "deals")
            assert (run["summaries"]["deals"]["parallel"] == 1
                    or re.search(r"Encoding export pages in \d worker process", log)), log[-4000:]
    assert all(r["summaries"]["deals"]["range"]["case"] == "since_watermark" for r in runs[1:])
    assert "since_watermark" in standalone.task_log(STREAM_DAG, runs[1]["run_id"], "cards")

    def files(kind: str) -> dict[str, list[dict[str, Any]]]:
        return {r["run_id"]: _read(Path(r["summaries"][kind]["path"])) for r in runs}

    deals = _deals_state(airflow.stream)
    _check_stream([{"run_id": r["run_id"], **r["summaries"]["deals"]} for r in runs], files("deals"), deals,
                  "update_time", "deals")
    cards = _cards_state(airflow.stream)
    _check_stream([{"run_id": r["run_id"], **r["summaries"]["cards"]} for r in runs], files("cards"), cards,
                  "updated_at", "cards")
    sizes = [len(_read(Path(r["summaries"]["deals"]["path"]))) for r in runs]
    assert sizes[0] > 400 and sum(sizes[1:]) == len({i for r in runs[1:] for i in
                                                     (row["id"] for row in files("deals")[r["run_id"]])}), sizes
    variable = json.loads(standalone.cli("variables", "get", f"crm_export_watermark.{STREAM_DAG}.deals").stdout)
    assert variable["until"] == runs[-1]["summaries"]["deals"]["range"]["end"]
