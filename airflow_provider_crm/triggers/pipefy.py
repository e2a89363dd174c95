"""Async pollers for the Pipefy sensors. They run in the triggerer: every call is awaited (httpx,
asyncio sleeps, store I/O in a thread), so they never block its event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_crm.clients.pipefy.values import card_fields
from airflow_provider_crm.common.errors import CrmNotFoundError, CrmPermissionError, CrmRetryableError
from airflow_provider_crm.hooks.pipefy import PipefyAsyncHook


class PipefyCardPhaseTrigger(BaseTrigger):
    """Fires when a card reaches a target phase, a failure phase, disappears, or the timeout passes.

    :param card_id: the card.
    :param target_phase_ids: phase ids that mean success.
    :param failure_phase_ids: phase ids that mean the wait has failed.
    :param pipefy_conn_id: the Pipefy connection.
    :param poll_interval: seconds between polls.
    :param timeout: seconds from the trigger's start; None waits for ever.
    :param first_poll_after: seconds before the first poll. The sensor passes its poke interval when it
        has just read the card itself: an immediate second read would only repeat it, and a wait that
        ends within a second or two of deferring can reach Airflow's scheduler before it has handled
        the deferral, which then marks the resumed task failed ("state changed externally", seen on
        Airflow 3.3.2 under load).
    """

    def __init__(self, card_id: str, target_phase_ids: list[str], failure_phase_ids: list[str] | None = None,
                 pipefy_conn_id: str = "pipefy_default", poll_interval: float = 60.0,
                 timeout: float | None = None, first_poll_after: float = 0.0) -> None:
        super().__init__()
        self.first_poll_after = first_poll_after
        self.card_id = str(card_id)
        self.target_phase_ids = [str(p) for p in target_phase_ids]
        self.failure_phase_ids = [str(p) for p in failure_phase_ids or []]
        self.pipefy_conn_id = pipefy_conn_id
        self.poll_interval = poll_interval
        self.timeout = timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_crm.triggers.pipefy.PipefyCardPhaseTrigger",
            {
                "card_id": self.card_id,
                "target_phase_ids": self.target_phase_ids,
                "failure_phase_ids": self.failure_phase_ids,
                "pipefy_conn_id": self.pipefy_conn_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "first_poll_after": self.first_poll_after,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = PipefyAsyncHook(pipefy_conn_id=self.pipefy_conn_id)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        await asyncio.sleep(self.first_poll_after)
        while True:
            try:
                card = await hook.aget_card(self.card_id)
            except (CrmNotFoundError, CrmPermissionError) as err:
                yield TriggerEvent({"status": "deleted", "card_id": self.card_id, "message": str(err)})
                return
            except CrmRetryableError as err:
                self.log.warning("Polling card %s failed, will retry: %s", self.card_id, err)
            except Exception as err:
                yield TriggerEvent({"status": "error", "card_id": self.card_id, "message": str(err)})
                return
            else:
                phase = card.get("current_phase") or {}
                info = {"card_id": self.card_id, "phase_id": str(phase.get("id")), "phase": phase.get("name"),
                        "fields": card_fields(card)}
                if str(phase.get("id")) in self.target_phase_ids:
                    yield TriggerEvent({"status": "success", **info})
                    return
                if str(phase.get("id")) in self.failure_phase_ids:
                    yield TriggerEvent({"status": "failure", **info})
                    return
            if deadline is not None and time.monotonic() >= deadline:
                yield TriggerEvent({"status": "timeout", "card_id": self.card_id,
                                    "message": f"card {self.card_id} did not reach {self.target_phase_ids} in "
                                               f"{self.timeout:.0f}s"})
                return
            await asyncio.sleep(self.poll_interval)


class PipefyPhaseTrigger(BaseTrigger):
    """Fires when a phase holds at least ``min_cards`` cards (that entered it at or after ``since``, if given).

    :param phase_id: the phase.
    :param min_cards: how many cards to wait for.
    :param since: ISO timestamp; only cards that entered the phase since then count.
    :param pipefy_conn_id: the Pipefy connection.
    :param poll_interval: seconds between polls.
    :param timeout: seconds from the trigger's start.
    """

    def __init__(self, phase_id: str, min_cards: int = 1, since: str | None = None,
                 pipefy_conn_id: str = "pipefy_default", poll_interval: float = 60.0,
                 timeout: float | None = None) -> None:
        super().__init__()
        self.phase_id = str(phase_id)
        self.min_cards = min_cards
        self.since = since
        self.pipefy_conn_id = pipefy_conn_id
        self.poll_interval = poll_interval
        self.timeout = timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_crm.triggers.pipefy.PipefyPhaseTrigger",
            {"phase_id": self.phase_id, "min_cards": self.min_cards, "since": self.since,
             "pipefy_conn_id": self.pipefy_conn_id, "poll_interval": self.poll_interval, "timeout": self.timeout},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = PipefyAsyncHook(pipefy_conn_id=self.pipefy_conn_id)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            try:
                cards = await hook.aphase_cards(self.phase_id)
            except CrmRetryableError as err:
                self.log.warning("Polling phase %s failed, will retry: %s", self.phase_id, err)
            except Exception as err:
                yield TriggerEvent({"status": "error", "phase_id": self.phase_id, "message": str(err)})
                return
            else:
                ids = matching_card_ids(cards, self.since, self.phase_id)
                if len(ids) >= self.min_cards:
                    yield TriggerEvent({"status": "success", "phase_id": self.phase_id, "card_ids": ids})
                    return
            if deadline is not None and time.monotonic() >= deadline:
                yield TriggerEvent({"status": "timeout", "phase_id": self.phase_id,
                                    "message": f"phase {self.phase_id} did not reach {self.min_cards} cards"})
                return
            await asyncio.sleep(self.poll_interval)


def matching_card_ids(cards: list[dict[str, Any]], since: str | None, phase_id: str | None = None) -> list[str]:
    """Ids of the cards, or of those that entered ``phase_id`` at or after ``since`` (ISO, UTC)."""
    if since is None:
        return [str(c["id"]) for c in cards]
    out = []
    for card in cards:
        entered = [str(h.get("firstTimeIn") or "") for h in card.get("phases_history") or []
                   if phase_id is None or str((h.get("phase") or {}).get("id")) == str(phase_id)]
        if any(moment >= since for moment in entered):
            out.append(str(card["id"]))
    return out
