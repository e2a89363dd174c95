"""Small helpers operators of both services share: data interval, asset events, link XComs."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


def data_interval(context: Any) -> tuple[datetime | None, datetime | None]:
    """The run's data interval; (None, None) when the run has none (a manual run's interval is empty):
    operators then work on everything."""
    start = context.get("data_interval_start")
    end = context.get("data_interval_end")
    if start is None or end is None or start == end:
        return None, None
    return start, end


def emit_asset_event(context: Any, outlets: list[Any], extra: dict[str, Any]) -> None:
    """Attach ``extra`` (record counts, path) to the asset events of the task's outlets."""
    events = context.get("outlet_events")
    if events is None:
        return
    for outlet in outlets or []:
        try:
            events[outlet].extra.update(extra)
        except Exception:  # an outlet that is not an asset
            log.debug("no asset event for outlet %r", outlet, exc_info=True)


def push_link(context: Any, key: str, url: str | None) -> None:
    ti = context.get("ti")
    if ti is not None and url:
        ti.xcom_push(key=key, value=url)


def task_label(operator: Any, context: Any) -> str:
    """``dag_id.task_id`` (``.map_index`` for a mapped task): names what belongs to one export task."""
    map_index = getattr(context.get("ti"), "map_index", None)
    label = f"{operator.dag_id}.{operator.task_id}"
    return label if map_index is None or map_index < 0 else f"{label}.{map_index}"
