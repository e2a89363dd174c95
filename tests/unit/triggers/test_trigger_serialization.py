"""Deferred tasks store a trigger's classpath and kwargs in the database: both must rebuild the same trigger."""

from __future__ import annotations

import importlib

import pytest

from airflow_provider_crm.triggers.pipedrive import PipedriveDealTrigger
from airflow_provider_crm.triggers.pipefy import PipefyCardPhaseTrigger, PipefyPhaseTrigger

TRIGGERS = [
    PipefyCardPhaseTrigger("42", ["3"], ["4"], "pf", poll_interval=5.0, timeout=60.0, first_poll_after=5.0),
    PipefyPhaseTrigger("3", 2, "2026-01-01T00:00:00Z", "pf", poll_interval=5.0, timeout=None),
    PipedriveDealTrigger(7, ["2"], ["won"], "pd", poll_interval=5.0, timeout=30.0, first_poll_after=5.0),
]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_serialized_trigger_rebuilds_from_its_stored_classpath(trigger):
    classpath, kwargs = trigger.serialize()
    assert classpath.startswith("airflow_provider_crm.triggers.")  # stored by deferred tasks: never moves
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert all(isinstance(v, (str, int, float, list, type(None))) for v in kwargs.values())  # JSON-safe
