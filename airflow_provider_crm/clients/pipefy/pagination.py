"""Relay pagination (``first`` / ``after``, ``pageInfo``) as Pipefy serves it.

A page may hold fewer nodes than asked for (a server can clamp ``first``, and the last page is
short): only ``pageInfo.hasNextPage`` and ``endCursor`` say whether there is more."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, cast

from airflow_provider_crm.common.errors import CrmNotFoundError
from airflow_provider_crm.common.readahead import read_ahead

Position = tuple[int, "str | None"]


def connection_at(data: dict[str, Any], path: list[str], variables: dict[str, Any]) -> dict[str, Any]:
    """The Relay connection at ``path`` in an answer's data."""
    connection: Any = data
    for key in path:
        connection = (connection or {}).get(key)
    if connection is None:
        raise CrmNotFoundError(f"{path[0]} returned nothing for {variables}", service="pipefy")
    return cast(dict[str, Any], connection)


def next_cursor(connection: dict[str, Any]) -> str | None:
    """The cursor of the next page, or None at the end."""
    info = connection.get("pageInfo") or {}
    return info["endCursor"] if info.get("hasNextPage") and info.get("endCursor") else None


def nodes(connection: dict[str, Any]) -> list[dict[str, Any]]:
    return [edge["node"] for edge in connection.get("edges") or []]


def paginate(fetch: Callable[[dict[str, Any], str], dict[str, Any]], variables: dict[str, Any], path: list[str],
             page_size: int) -> Iterator[dict[str, Any]]:
    """Nodes of the connection at ``path``, page by page, one page read ahead (common/readahead.py).

    :param fetch: runs the document with the given variables; its second argument names the page.
    """
    ident = next((variables[k] for k in ("id", "pipeId", "tableId") if k in variables), None)
    what = f"{path[0]} of {ident}" if ident is not None else path[0]

    def page(position: Position) -> dict[str, Any]:
        number, after = position
        data = fetch({**variables, "first": page_size, "after": after}, f"{what} page {number}")
        return connection_at(data, path, variables)

    def following(position: Position, connection: dict[str, Any]) -> Position | None:
        cursor = next_cursor(connection)
        return None if cursor is None else (position[0] + 1, cursor)

    for connection in read_ahead(page, (1, None), following):
        yield from nodes(connection)


def pages_for(count: int, page_size: int) -> int:
    """Pages needed for ``count`` nodes (at least one call)."""
    return max(1, math.ceil(count / page_size))
