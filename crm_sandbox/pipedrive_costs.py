"""What each Pipedrive request costs against the company's daily token budget, as the sandbox sees it.

The numbers are the ``x-token-cost`` of every operation in Pipedrive's published OpenAPI specs, read
by ``scripts/gen_pipedrive_costs.py`` into ``pipedrive_costs.json`` next to this module. The sandbox
keeps its own reading and its own lookup, apart from the provider's client, so that a mistake in one
side's table shows up as a disagreement over HTTP instead of hiding on both sides.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

UNKNOWN_COST = 10  # an operation the specs do not list: priced like a list read


@cache
def _table() -> dict[tuple[str, str, int], list[tuple[int, tuple[str | None, ...], int]]]:
    """``(version, method, segment count)`` -> ``(placeholders, segments, cost)``, fewest placeholders first.

    A segment is ``None`` where the template has a ``{placeholder}``.
    """
    raw = json.loads(resources.files("crm_sandbox").joinpath("pipedrive_costs.json").read_text())
    table: dict[tuple[str, str, int], list[tuple[int, tuple[str | None, ...], int]]] = {}
    for version, operations in raw.items():
        for operation, cost in operations.items():
            method, template = operation.split(" ", 1)
            segments = tuple(None if s.startswith("{") and s.endswith("}") else s
                             for s in template.strip("/").split("/"))
            placeholders = sum(s is None for s in segments)
            table.setdefault((version, method, len(segments)), []).append((placeholders, segments, int(cost)))
    for candidates in table.values():
        candidates.sort(key=lambda c: c[0])
    return table


def token_cost(method: str, path: str, version: str) -> int:
    """Tokens one request spends: ``path`` is what follows ``/api/v1`` or ``/api/v2`` (a query is ignored).

    An exact template beats one with placeholders (``/deals/archived`` before ``/deals/{id}``).
    """
    parts = path.split("?", 1)[0].strip("/").split("/")
    for _, segments, cost in _table().get((version, method.upper(), len(parts)), []):
        if all(s is None or s == p for s, p in zip(segments, parts, strict=True)):
            return cost
    return UNKNOWN_COST
