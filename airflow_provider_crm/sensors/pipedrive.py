"""Sensor that waits for a Pipedrive deal to reach a stage or a status."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_crm.common.context import push_link
from airflow_provider_crm.common.errors import CrmInputError, CrmNotFoundError
from airflow_provider_crm.hooks.pipedrive import PipedriveHook
from airflow_provider_crm.links import PipedriveRecordLink
from airflow_provider_crm.sensors.base import CrmSensor
from airflow_provider_crm.triggers.pipedrive import PipedriveDealTrigger, deal_state

STATUSES = ("open", "won", "lost")


class PipedriveDealSensor(CrmSensor):
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
                 pipedrive_conn_id: str = PipedriveHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deal_id = deal_id
        self.stage_ids = stage_ids or []
        self.statuses = statuses or []
        self.pipedrive_conn_id = pipedrive_conn_id

    @cached_property
    def hook(self) -> PipedriveHook:
        return PipedriveHook(pipedrive_conn_id=self.pipedrive_conn_id)

    def prepare(self, context: Any) -> None:
        if not self.stage_ids and not self.statuses:
            raise CrmInputError("PipedriveDealSensor needs stage_ids or statuses")
        unknown = [s for s in self.statuses if s not in STATUSES]
        if unknown:
            raise CrmInputError(f"unknown deal status(es) {unknown}; use {', '.join(STATUSES)}")
        push_link(context, PipedriveRecordLink.xcom_key, self.hook.record_url("deals", self.deal_id))

    @property
    def waiting_for(self) -> str:
        return f"deal {self.deal_id}"

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

    def check(self, context: Any) -> dict[str, Any] | None:
        state, info = self._state()
        self.log.info("Deal %s: status %s, stage %s", self.deal_id, info["status"], info["stage_id"])
        return info if state == "success" else None

    def trigger(self, context: Any) -> PipedriveDealTrigger:
        return PipedriveDealTrigger(int(self.deal_id), [str(s) for s in self.stage_ids], list(self.statuses),
                                    self.pipedrive_conn_id, **self.trigger_timing(),
                                    first_poll_after=self.first_poll_after())

    def event_result(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if event.get("status") == "failure":
            raise AirflowFailException(f"deal {event['deal_id']} can no longer reach the target: "
                                       f"{event.get('message') or event.get('deal_status')}")
        if event.get("status") != "success":
            return None
        return {"deal_id": event["deal_id"], "status": event.get("deal_status"), "stage_id": event.get("stage_id")}
