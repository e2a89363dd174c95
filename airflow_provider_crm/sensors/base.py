"""What every CRM sensor shares: poke or defer, the trigger's timing, and how a trigger event that is not
a success ends the task. Each sensor supplies its check, its trigger and what success returns."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowSensorTimeout,
    AirflowSkipException,
)
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.triggers.base import BaseTrigger


def _default_deferrable() -> bool:
    from airflow.providers.common.compat.sdk import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


def _seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class CrmSensor(BaseSensorOperator):
    """A sensor that pokes from a worker slot or, deferred, waits in the triggerer.

    Subclasses implement :meth:`check` (done -> the value to return, else None; raise to fail),
    :meth:`trigger` and :meth:`event_result`; :meth:`prepare` runs first in either mode.

    :param deferrable: wait in the triggerer instead of a worker slot
        (default ``[operators] default_deferrable``).
    """

    check_before_deferring = True  # a wait that is already over ends without a trip to the triggerer

    def __init__(self, *, deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

    # -- what a sensor supplies ---------------------------------------------------------------------
    def prepare(self, context: Any) -> None:
        """Validate arguments and push extra links, before the first check."""

    def check(self, context: Any) -> Any | None:
        """One look: the value to return when the wait is over, None to keep waiting."""
        raise NotImplementedError

    def trigger(self, context: Any) -> BaseTrigger:
        """The trigger that waits in the triggerer, built with :meth:`trigger_timing`."""
        raise NotImplementedError

    def event_result(self, event: dict[str, Any]) -> Any:
        """The return value for a trigger's ``success`` event; raise for the sensor's own failure events
        (other statuses, timeout and error, are handled by :meth:`event_failure`)."""
        raise NotImplementedError

    @property
    def waiting_for(self) -> str:
        """What the sensor waits for, in messages."""
        return self.task_id

    # -- shared plumbing ----------------------------------------------------------------------------
    def trigger_timing(self) -> dict[str, Any]:
        """``poll_interval`` and ``timeout`` for a trigger, from the sensor's own settings."""
        return {"poll_interval": _seconds(self.poke_interval) or 60.0, "timeout": _seconds(self.timeout) or None}

    def first_poll_after(self) -> float:
        """Seconds before a trigger's first poll: a poke interval when the sensor has just checked itself
        (``check_before_deferring``): an immediate poll would repeat that read, and a wait over within a
        second of deferring can race Airflow 3.3.2's scheduler into failing the resumed task."""
        return float(self.trigger_timing()["poll_interval"]) if self.check_before_deferring else 0.0

    def execute(self, context: Any) -> Any:
        self.prepare(context)
        if not self.deferrable:
            return super().execute(context)
        if self.check_before_deferring:
            done = self.check(context)
            if done is not None:
                return done
        self.defer(trigger=self.trigger(context), method_name="execute_complete")

    def poke(self, context: Any) -> PokeReturnValue:
        done = self.check(context)
        return PokeReturnValue(is_done=done is not None, xcom_value=done)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        result = self.event_result(event)  # raises for the sensor's own failure statuses
        if event.get("status") == "success":
            return result
        self.event_failure(event)

    def event_failure(self, event: dict[str, Any]) -> NoReturn:
        """A timeout (skipped with ``soft_fail``) or an error reported by the trigger."""
        status = event.get("status")
        message = event.get("message") or ""
        what = f"waiting for {self.waiting_for}"
        if status == "timeout":
            if self.soft_fail:
                raise AirflowSkipException(f"{what}: timed out ({message}); skipping (soft_fail)")
            raise AirflowSensorTimeout(f"{what}: timed out: {message}")
        raise AirflowException(f"{what}: trigger ended with {status}: {message}")
