"""Sensor that waits for a Pipedrive deal to reach a stage or a status."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)
from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_crm.common.context import push_link
from airflow_provider_crm.common.errors import CrmInputError, CrmNotFoundError
from airflow_provider_crm.hooks.pipedrive import PipedriveHook
from airflow_provider_crm.links import PipedriveRecordLink
from airflow_provider_crm.triggers.pipedrive import PipedriveDealTrigger, deal_state

STATUSES = ("open", "won", "lost")


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class PipedriveDealSensor(BaseSensorOperator):
    """Wait until a deal is in one of ``stage_ids`` or has one of ``statuses``.

    Fails at once when the deal is deleted or closes in a status that is not a target (a deal that is
    won or lost can no longer move to a target stage). Returns ``{"deal_id", "status", "stage_id"}``.
    Deferred, the wait runs in the triggerer (:class:`PipedriveDealTrigger`) and ends after
    ``timeout`` seconds like a poking sensor (skipped with ``soft_fail``).

    :param deal_id: the deal.
    :param stage_ids: target stage ids.
    :param statuses: target statuses: won, lost or open.
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``).
    :param pipedrive_conn_id: the Pipedrive connection.
    """

    template_fields: Sequence[str] = ("deal_id", "stage_ids", "statuses")
    operator_extra_links = (PipedriveRecordLink(),)

    def __init__(self, *, deal_id: Any, stage_ids: list[Any] | None = None, statuses: list[str] | None = None,
                 pipedrive_conn_id: str = PipedriveHook.default_conn_name, deferrable: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deal_id = deal_id
        self.stage_ids = stage_ids or []
        self.statuses = statuses or []
        self.pipedrive_conn_id = pipedrive_conn_id
        if deferrable is None:
            from airflow.providers.common.compat.sdk import conf

            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> PipedriveHook:
        return PipedriveHook(pipedrive_conn_id=self.pipedrive_conn_id)

    def _validate(self) -> None:
        if not self.stage_ids and not self.statuses:
            raise CrmInputError("PipedriveDealSensor needs stage_ids or statuses")
        unknown = [s for s in self.statuses if s not in STATUSES]
        if unknown:
            raise CrmInputError(f"unknown deal status(es) {unknown}; use {', '.join(STATUSES)}")

    def _state(self) -> tuple[str | None, dict[str, Any]]:
        try:
            deal = self.hook.get("deals", self.deal_id)
        except CrmNotFoundError as err:
            raise AirflowFailException(f"deal {self.deal_id} does not exist or was deleted: {err}") from err
        state = deal_state(deal, [str(s) for s in self.stage_ids], list(self.statuses))
        if state == "failure":
            raise AirflowFailException(f"deal {self.deal_id} is {deal.get('status')}: it can no longer reach "
                                       f"{self.statuses or self.stage_ids}")
        return state, {"deal_id": deal["id"], "status": deal.get("status"), "stage_id": deal.get("stage_id")}

    def execute(self, context: Any) -> Any:
        self._validate()
        push_link(context, PipedriveRecordLink.xcom_key, self.hook.record_url("deals", self.deal_id))
        if not self.deferrable:
            return super().execute(context)
        state, info = self._state()
        if state == "success":
            return info
        self.defer(trigger=PipedriveDealTrigger(int(self.deal_id), [str(s) for s in self.stage_ids],
                                                list(self.statuses), self.pipedrive_conn_id,
                                                poll_interval=_seconds(self.poke_interval) or 60.0,
                                                timeout=_seconds(self.timeout) or None),
                   method_name="execute_complete")

    def poke(self, context: Any) -> PokeReturnValue:
        state, info = self._state()
        self.log.info("Deal %s: status %s, stage %s", self.deal_id, info["status"], info["stage_id"])
        return PokeReturnValue(is_done=state == "success", xcom_value=info)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("status") == "success":
            return {"deal_id": event["deal_id"], "status": event.get("deal_status"), "stage_id": event.get("stage_id")}
        if event.get("status") == "failure":
            raise AirflowFailException(f"deal {event['deal_id']} can no longer reach the target: "
                                       f"{event.get('message') or event.get('deal_status')}")
        what = f"waiting for deal {self.deal_id}"
        if event.get("status") == "timeout":
            if self.soft_fail:
                raise AirflowSkipException(f"{what}: timed out ({event.get('message')}); skipping (soft_fail)")
            raise AirflowSensorTimeout(f"{what}: timed out: {event.get('message')}")
        raise AirflowException(f"{what} ended with {event.get('status')}: {event.get('message')}")
