"""Sensors that wait on Pipefy phases: poke mode or deferred to the triggerer."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_crm.clients.pipefy.values import card_fields
from airflow_provider_crm.common.context import data_interval, push_link
from airflow_provider_crm.common.errors import CrmNotFoundError, CrmPermissionError
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.links import PipefyCardLink
from airflow_provider_crm.sensors.base import CrmSensor
from airflow_provider_crm.triggers.pipefy import (
    PipefyCardPhaseTrigger,
    PipefyPhaseTrigger,
    matching_card_ids,
)


class PipefyCardFailedError(AirflowFailException):
    """The card reached a failure phase or was deleted: waiting longer cannot succeed."""


class PipefyCardPhaseSensor(CrmSensor):
    """Wait until a card reaches one of the target phases; fail at once on a failure phase or deletion.

    Pushes the card's phase and fields (by label and id) as its return value.

    :param card_id: the card.
    :param target_phases: phase ids or names that mean done.
    :param failure_phases: phase ids or names that mean the wait failed.
    :param deferrable: wait in the triggerer instead of a worker slot
        (default ``[operators] default_deferrable``).
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("card_id", "target_phases", "failure_phases")
    operator_extra_links = (PipefyCardLink(),)

    def __init__(self, *, card_id: str | int, target_phases: list[str | int] | str | int,
                 failure_phases: list[str | int] | None = None, pipefy_conn_id: str = PipefyHook.default_conn_name,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.card_id = card_id
        self.target_phases = target_phases if isinstance(target_phases, list) else [target_phases]
        self.failure_phases = failure_phases or []
        self.pipefy_conn_id = pipefy_conn_id
        self._phases: tuple[list[str], list[str]] | None = None  # target and failure phase ids, once read

    @cached_property
    def hook(self) -> PipefyHook:
        return PipefyHook(pipefy_conn_id=self.pipefy_conn_id)

    def _phase_ids(self, card: dict[str, Any]) -> tuple[list[str], list[str]]:
        pipe_id = card["pipe"]["id"]
        targets = [str(self.hook.resolve_phase(pipe_id, p)["id"]) for p in self.target_phases]
        failures = [str(self.hook.resolve_phase(pipe_id, p)["id"]) for p in self.failure_phases]
        return targets, failures

    def _card(self) -> dict[str, Any]:
        try:
            return self.hook.get_card(self.card_id)
        except (CrmNotFoundError, CrmPermissionError) as err:
            raise PipefyCardFailedError(f"card {self.card_id} was deleted or is no longer visible: {err}") from err

    def _check(self, card: dict[str, Any], targets: list[str], failures: list[str]) -> dict[str, Any] | None:
        phase = card["current_phase"]
        info = {"card_id": str(card["id"]), "phase_id": str(phase["id"]), "phase": phase["name"],
                "fields": card_fields(card)}
        if str(phase["id"]) in failures:
            raise PipefyCardFailedError(f"card {card['id']} reached failure phase {phase['name']!r}")
        return info if str(phase["id"]) in targets else None

    @property
    def waiting_for(self) -> str:
        return f"card {self.card_id}"

    def prepare(self, context: Any) -> None:
        push_link(context, PipefyCardLink.xcom_key, self.hook.card_url(self.card_id))

    def check(self, context: Any) -> dict[str, Any] | None:
        card = self._card()
        self._phases = self._phase_ids(card)  # the trigger reuses them: no second read of the card
        self.log.info("Card %s is in phase %r", self.card_id, card["current_phase"]["name"])
        return self._check(card, *self._phases)

    def trigger(self, context: Any) -> PipefyCardPhaseTrigger:
        targets, failures = self._phases if self._phases is not None else self._phase_ids(self._card())
        self.log.info("Deferring until card %s reaches %s", self.card_id, self.target_phases)
        return PipefyCardPhaseTrigger(str(self.card_id), targets, failures, self.pipefy_conn_id, **self.trigger_timing(),
                                      first_poll_after=self.first_poll_after())

    def event_result(self, event: dict[str, Any]) -> dict[str, Any] | None:
        status = event.get("status")
        if status == "failure":
            raise PipefyCardFailedError(f"card {event['card_id']} reached failure phase {event['phase']!r}")
        if status == "deleted":
            raise PipefyCardFailedError(f"card {event['card_id']} was deleted: {event.get('message')}")
        if status != "success":
            return None
        self.log.info("Card %s reached phase %r", event["card_id"], event["phase"])
        return {k: event[k] for k in ("card_id", "phase_id", "phase", "fields")}


class PipefyPhaseSensor(CrmSensor):
    """Wait until a phase holds at least ``min_cards`` cards, optionally only cards that entered it since
    the data interval began (from each card's phase history). Returns their ids.

    :param pipe_id: the pipe (to resolve a phase name).
    :param phase: phase id or name.
    :param min_cards: how many cards to wait for.
    :param since_interval_start: count only cards that entered the phase since the run's data interval began.
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``).
    :param pipefy_conn_id: the Pipefy connection.
    """

    template_fields: Sequence[str] = ("pipe_id", "phase")

    def __init__(self, *, pipe_id: str | int, phase: str | int, min_cards: int = 1, since_interval_start: bool = False,
                 pipefy_conn_id: str = PipefyHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipe_id = pipe_id
        self.phase = phase
        self.min_cards = min_cards
        self.since_interval_start = since_interval_start
        self.pipefy_conn_id = pipefy_conn_id

    @cached_property
    def hook(self) -> PipefyHook:
        return PipefyHook(pipefy_conn_id=self.pipefy_conn_id)

    def _since(self, context: Any) -> str | None:
        if not self.since_interval_start:
            return None
        start, _ = data_interval(context)
        return start.strftime("%Y-%m-%dT%H:%M:%SZ") if start else None

    check_before_deferring = False  # defers at once, as it always has

    @property
    def waiting_for(self) -> str:
        return f"phase {self.phase!r}"

    def check(self, context: Any) -> list[str] | None:
        phase = self.hook.resolve_phase(self.pipe_id, self.phase)
        ids = matching_card_ids(list(self.hook.iter_phase_cards(phase["id"])), self._since(context), phase["id"])
        self.log.info("Phase %r holds %d matching cards (waiting for %d)", phase["name"], len(ids), self.min_cards)
        return ids if len(ids) >= self.min_cards else None

    def trigger(self, context: Any) -> PipefyPhaseTrigger:
        phase = self.hook.resolve_phase(self.pipe_id, self.phase)
        return PipefyPhaseTrigger(str(phase["id"]), self.min_cards, self._since(context), self.pipefy_conn_id,
                                  **self.trigger_timing())

    def event_result(self, event: dict[str, Any]) -> list[str] | None:
        if event.get("status") != "success":
            return None
        self.log.info("Phase %r holds %d matching cards", self.phase, len(event["card_ids"]))
        return event["card_ids"]
