"""The deferral plumbing every CRM sensor shares, and how each sensor ends on a trigger's events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from airflow.exceptions import TaskDeferred
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)

from airflow_provider_crm.sensors.base import CrmSensor
from airflow_provider_crm.sensors.pipedrive import PipedriveDealSensor
from airflow_provider_crm.sensors.pipefy import (
    PipefyCardFailedError,
    PipefyCardPhaseSensor,
    PipefyPhaseSensor,
)
from airflow_provider_crm.triggers.pipedrive import PipedriveDealTrigger


class CountingSensor(CrmSensor):
    """Done once ``checks`` looks have been made; its trigger is a real one, never run here."""

    def __init__(self, *, done_after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done_after = done_after
        self.checks = 0

    def check(self, context: Any) -> dict[str, Any] | None:
        self.checks += 1
        return {"after": self.checks} if self.checks >= self.done_after else None

    def trigger(self, context: Any) -> PipedriveDealTrigger:
        return PipedriveDealTrigger(7, statuses=["won"], **self.trigger_timing())

    def event_result(self, event: dict[str, Any]) -> Any:
        return {"from": "trigger"} if event.get("status") == "success" else None


def test_a_wait_already_over_returns_without_deferring():
    sensor = CountingSensor(task_id="s", done_after=1, deferrable=True)
    assert sensor.execute({}) == {"after": 1}


def test_a_deferred_wait_hands_the_sensors_timing_to_the_trigger():
    sensor = CountingSensor(task_id="s", done_after=5, deferrable=True, poke_interval=timedelta(seconds=7),
                            timeout=90)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert deferred.value.method_name == "execute_complete"
    _, kwargs = deferred.value.trigger.serialize()
    assert (kwargs["poll_interval"], kwargs["timeout"]) == (7.0, 90.0)


def test_poke_mode_returns_the_checks_value():
    sensor = CountingSensor(task_id="s", done_after=2, deferrable=False)
    assert not sensor.poke({}).is_done
    done = sensor.poke({})
    assert done.is_done and done.xcom_value == {"after": 2}


def test_trigger_events_end_the_task_as_a_poking_sensor_would():
    sensor = CountingSensor(task_id="s", done_after=9, deferrable=True)
    assert sensor.execute_complete({}, {"status": "success"}) == {"from": "trigger"}
    with pytest.raises(AirflowSensorTimeout, match="waiting for s: timed out: after 90s"):
        sensor.execute_complete({}, {"status": "timeout", "message": "after 90s"})
    with pytest.raises(AirflowException, match="trigger ended with error: HTTP 401"):
        sensor.execute_complete({}, {"status": "error", "message": "HTTP 401"})
    soft = CountingSensor(task_id="s", done_after=9, deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException, match="skipping"):
        soft.execute_complete({}, {"status": "timeout", "message": "after 90s"})


def test_pipefy_card_sensor_fails_on_a_failure_phase_or_deletion_and_names_the_card():
    sensor = PipefyCardPhaseSensor(task_id="s", card_id="42", target_phases=["Done"], deferrable=True)
    with pytest.raises(PipefyCardFailedError, match="card 42 reached failure phase 'Lost'"):
        sensor.execute_complete({}, {"status": "failure", "card_id": "42", "phase": "Lost"})
    with pytest.raises(PipefyCardFailedError, match="card 42 was deleted"):
        sensor.execute_complete({}, {"status": "deleted", "card_id": "42", "message": "gone"})
    event = {"status": "success", "card_id": "42", "phase_id": "3", "phase": "Done", "fields": {"a": 1}}
    assert sensor.execute_complete({}, event) == {"card_id": "42", "phase_id": "3", "phase": "Done",
                                                  "fields": {"a": 1}}
    with pytest.raises(AirflowSensorTimeout, match="waiting for card 42"):
        sensor.execute_complete({}, {"status": "timeout", "message": "1h"})


def test_pipefy_phase_sensor_returns_the_card_ids():
    sensor = PipefyPhaseSensor(task_id="s", pipe_id="1", phase="Doing", deferrable=True)
    assert sensor.execute_complete({}, {"status": "success", "card_ids": ["1", "2"]}) == ["1", "2"]
    with pytest.raises(AirflowSensorTimeout, match="waiting for phase 'Doing'"):
        sensor.execute_complete({}, {"status": "timeout"})


def test_pipedrive_deal_sensor_fails_when_the_deal_can_no_longer_reach_the_target():
    sensor = PipedriveDealSensor(task_id="s", deal_id=5, statuses=["won"], deferrable=True)
    with pytest.raises(AirflowFailException, match="deal 5 can no longer reach the target: lost"):
        sensor.execute_complete({}, {"status": "failure", "deal_id": 5, "deal_status": "lost"})
    assert sensor.execute_complete({}, {"status": "success", "deal_id": 5, "deal_status": "won", "stage_id": 2}) \
        == {"deal_id": 5, "status": "won", "stage_id": 2}
