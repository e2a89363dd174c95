"""Async poller for the Pipedrive deal sensor (httpx, awaited rate limiting: never blocks the loop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_crm.common.errors import CrmNotFoundError, CrmRetryableError
from airflow_provider_crm.hooks.pipedrive import PipedriveAsyncHook


def deal_state(deal: dict[str, Any], stage_ids: list[str], statuses: list[str]) -> str | None:
    """``success`` when the deal is in a target stage or status, ``failure`` when it can no longer get
    there (deleted, or closed in another status), else None."""
    status = str(deal.get("status") or "")
    if deal.get("is_deleted") or status == "deleted":
        return "failure"
    if status in statuses or (stage_ids and str(deal.get("stage_id")) in stage_ids and status == "open"):
        return "success"
    if status in ("won", "lost") and status not in statuses:
        return "failure"
    return None


class PipedriveDealTrigger(BaseTrigger):
    """Fires when a deal reaches a stage or a status, can no longer reach it, or the timeout passes.

    :param deal_id: the deal.
    :param stage_ids: target stage ids.
    :param statuses: target statuses (won, lost, open).
    :param pipedrive_conn_id: the Pipedrive connection.
    :param poll_interval: seconds between polls.
    :param timeout: seconds from the trigger's start.
    :param first_poll_after: seconds before the first poll; the sensor passes its poke interval when it
        has just read the deal itself (as :class:`~.pipefy.PipefyCardPhaseTrigger`, which says why).
    """

    def __init__(self, deal_id: int, stage_ids: list[str] | None = None, statuses: list[str] | None = None,
                 pipedrive_conn_id: str = "pipedrive_default", poll_interval: float = 60.0,
                 timeout: float | None = None, first_poll_after: float = 0.0) -> None:
        super().__init__()
        self.first_poll_after = first_poll_after
        self.deal_id = int(deal_id)
        self.stage_ids = [str(s) for s in stage_ids or []]
        self.statuses = list(statuses or [])
        self.pipedrive_conn_id = pipedrive_conn_id
        self.poll_interval = poll_interval
        self.timeout = timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_crm.triggers.pipedrive.PipedriveDealTrigger",
            {"deal_id": self.deal_id, "stage_ids": self.stage_ids, "statuses": self.statuses,
             "pipedrive_conn_id": self.pipedrive_conn_id, "poll_interval": self.poll_interval,
             "timeout": self.timeout, "first_poll_after": self.first_poll_after},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = PipedriveAsyncHook(pipedrive_conn_id=self.pipedrive_conn_id)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        await asyncio.sleep(self.first_poll_after)
        while True:
            try:
                deal = await hook.aget("deals", self.deal_id)
            except CrmNotFoundError as err:
                yield TriggerEvent({"status": "failure", "deal_id": self.deal_id, "message": str(err)})
                return
            except CrmRetryableError as err:
                self.log.warning("Polling deal %s failed, will retry: %s", self.deal_id, err)
            except Exception as err:
                yield TriggerEvent({"status": "error", "deal_id": self.deal_id, "message": str(err)})
                return
            else:
                state = deal_state(deal, self.stage_ids, self.statuses)
                if state is not None:
                    yield TriggerEvent({"status": state, "deal_id": self.deal_id, "deal_status": deal.get("status"),
                                        "stage_id": deal.get("stage_id")})
                    return
            if deadline is not None and time.monotonic() >= deadline:
                yield TriggerEvent({"status": "timeout", "deal_id": self.deal_id,
                                    "message": f"deal {self.deal_id} did not reach the target in {self.timeout:.0f}s"})
                return
            await asyncio.sleep(self.poll_interval)
