"""Sensors that wait on Pipefy phases: poke mode or deferred to the triggerer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any, NoReturn

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
)
from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_crm.clients.pipefy.values import card_fields
from airflow_provider_crm.common.context import data_interval, push_link
from airflow_provider_crm.common.errors import CrmNotFoundError, CrmPermissionError
from airflow_provider_crm.hooks.pipefy import PipefyHook
from airflow_provider_crm.links import PipefyCardLink
from airflow_provider_crm.triggers.pipefy import (
    PipefyCardPhaseTrigger,
    PipefyPhaseTrigger,
    matching_card_ids,
)


def _default_deferrable() -> bool:
    from airflow.providers.common.compat.sdk import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class PipefyCardFailedError(AirflowFailException):
    """The card reached a failure phase or was deleted: waiting longer cannot succeed."""


def _event_failure(sensor: BaseSensorOperator, event: dict[str, Any], what: str) -> NoReturn:
    """Raise for a trigger event that is not a success: timeout (skip with ``soft_fail``) or error."""
    status = event.get("status")
    message = event.get("message") or ""
    if status == "timeout":
        if sensor.soft_fail:
            raise AirflowSkipException(f"{what}: timed out ({message}); skipping (soft_fail)")
        raise AirflowSensorTimeout(f"{what}: timed out: {message}")
    raise AirflowException(f"{what}: trigger ended with {status}: {message}")


class PipefyCardPhaseSensor(BaseSensorOperator):
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
                 deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.card_id = card_id
        self.target_phases = target_phases if isinstance(target_phases, list) else [target_phases]
        self.failure_phases = failure_phases or []
        self.pipefy_conn_id = pipefy_conn_id
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

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

    def execute(self, context: Any) -> Any:
        push_link(context, PipefyCardLink.xcom_key, self.hook.card_url(self.card_id))
        if not self.deferrable:
            return super().execute(context)
        card = self._card()
        targets, failures = self._phase_ids(card)
        done = self._check(card, targets, failures)
        if done is not None:
            return done
        self.log.info("Card %s is in phase %r; deferring until it reaches %s", self.card_id,
                      card["current_phase"]["name"], self.target_phases)
        self.defer(
            trigger=PipefyCardPhaseTrigger(str(self.card_id), targets, failures, self.pipefy_conn_id,
                                           poll_interval=_seconds(self.poke_interval) or 60.0,
                                           timeout=_seconds(self.timeout) or None),
            method_name="execute_complete",
        )

    def poke(self, context: Any) -> PokeReturnValue:
        card = self._card()
        targets, failures = self._phase_ids(card)
        info = self._check(card, targets, failures)
        self.log.info("Card %s is in phase %r", self.card_id, card["current_phase"]["name"])
        return PokeReturnValue(is_done=info is not None, xcom_value=info)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        status = event.get("status")
        if status == "success":
            self.log.info("Card %s reached phase %r", event["card_id"], event["phase"])
            return {k: event[k] for k in ("card_id", "phase_id", "phase", "fields")}
        if status == "failure":
            raise PipefyCardFailedError(f"card {event['card_id']} reached failure phase {event['phase']!r}")
        if status == "deleted":
            raise PipefyCardFailedError(f"card {event['card_id']} was deleted: {event.get('message')}")
        _event_failure(self, event, f"waiting for card {self.card_id}")


class PipefyPhaseSensor(BaseSensorOperator):
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
                 pipefy_conn_id: str = PipefyHook.default_conn_name, deferrable: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipe_id = pipe_id
        self.phase = phase
        self.min_cards = min_cards
        self.since_interval_start = since_interval_start
        self.pipefy_conn_id = pipefy_conn_id
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

    @cached_property
    def hook(self) -> PipefyHook:
        return PipefyHook(pipefy_conn_id=self.pipefy_conn_id)

    def _since(self, context: Any) -> str | None:
        if not self.since_interval_start:
            return None
        start, _ = data_interval(context)
        return start.strftime("%Y-%m-%dT%H:%M:%SZ") if start else None

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        phase = self.hook.resolve_phase(self.pipe_id, self.phase)
        self.defer(trigger=PipefyPhaseTrigger(str(phase["id"]), self.min_cards, self._since(context),
                                              self.pipefy_conn_id, poll_interval=_seconds(self.poke_interval) or 60.0,
                                              timeout=_seconds(self.timeout) or None),
                   method_name="execute_complete")

    def poke(self, context: Any) -> PokeReturnValue:
        phase = self.hook.resolve_phase(self.pipe_id, self.phase)
        ids = matching_card_ids(list(self.hook.iter_phase_cards(phase["id"])), self._since(context), phase["id"])
        self.log.info("Phase %r holds %d matching cards (waiting for %d)", phase["name"], len(ids), self.min_cards)
        return PokeReturnValue(is_done=len(ids) >= self.min_cards, xcom_value=ids)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> list[str]:
        if event.get("status") != "success":
            _event_failure(self, event, f"waiting for phase {self.phase!r}")
        self.log.info("Phase %r holds %d matching cards", self.phase, len(event["card_ids"]))
        return event["card_ids"]
