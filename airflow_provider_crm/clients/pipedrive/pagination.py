"""Reading Pipedrive's lists page by page: cursor (v2), offset (v1) or all at once, and the overlap of
offset pages that keeps a deletion mid-read from skipping records. No I/O: the sync and async clients
fetch the pages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from airflow_provider_crm.clients.pipedrive.entities import MAX_PAGE
from airflow_provider_crm.common.errors import CrmTransientApiError


def offset_overlap(limit: int) -> int:
    """Items each offset page re-reads of the previous one: 4 % (20 of 500, 2 of 50), at least 1."""
    return max(1, limit // 25)


@dataclass(frozen=True)
class Pages:
    """One list endpoint to read page by page.

    Offset pages overlap by a few items (:func:`offset_overlap`): a record deleted before the current
    offset shifts every later one down, and without the overlap the item at the page boundary would
    never be read. The previous page's last items are not yielded again (:class:`OverlapCheck`); if
    none of them comes back (more deletions than the overlap between two requests),
    :class:`CrmTransientApiError` is raised rather than leaving a gap, and a retry of the task reads
    the list again. (A record entering the list before the offset shifts items the other way: one
    already read can come again; exports drop repeated ids.)

    :param style: ``cursor`` (v2 default), ``offset`` (v1 default) or ``none`` for the few endpoints
        that answer with everything at once (``/v1/users``).
    :param shallow: if given, items are read shallowly: only these keys' values are decoded, the others
        stay raw JSON text (:func:`~airflow_provider_crm.common.jsoncodec.shallow_items`).
    """

    version: str
    path: str
    params: dict[str, Any] | None = None
    page_size: int = MAX_PAGE
    style: str | None = None
    shallow: frozenset[str] | None = None

    @property
    def kind(self) -> str:
        return self.style or ("cursor" if self.version == "v2" else "offset")

    @property
    def what(self) -> str:
        return f"GET /api/{self.version}{self.path}"

    def first(self) -> dict[str, Any]:
        """The first page's parameters."""
        return {**(self.params or {}), "limit": min(self.page_size, MAX_PAGE)}

    def following(self, params: dict[str, Any], extra: Any) -> dict[str, Any] | None:
        """Parameters of the page after the one asked with ``params`` whose ``additional_data`` is
        ``extra``; None at the end."""
        extra = extra if isinstance(extra, dict) else {}
        if self.kind == "cursor":
            cursor = extra.get("next_cursor")
            return {**params, "cursor": cursor} if cursor else None
        pagination = extra.get("pagination") or {}
        if not pagination.get("more_items_in_collection"):
            return None
        start = int(pagination.get("next_start", params.get("start", 0) + params["limit"]))
        overlap = offset_overlap(params["limit"])
        return {**params, "start": max(int(params.get("start") or 0) + 1, start - overlap)}

    def check(self) -> OverlapCheck | None:
        """What drops the re-read items of offset pages (None for cursor pages)."""
        if self.kind != "offset":
            return None
        limit = self.first()["limit"]
        return OverlapCheck(offset_overlap(limit), limit, self.what)


class OverlapCheck:
    """The items of overlapping offset pages, the re-read ones once (see :class:`Pages`), page by page.

    Raises :class:`CrmTransientApiError` when a page after a full one brings back none of that page's
    last ``overlap`` items: the offsets moved by more than the overlap, so items may have been missed.
    (After a short page that says more follow, the items' offsets are unknown and nothing is checked.)
    """

    def __init__(self, overlap: int, limit: int, what: str) -> None:
        self.overlap, self.limit, self.what = overlap, limit, what
        self._tail: set[Any] = set()  # ids of the previous page's last `overlap` items
        self._previous_was_full = False

    def page(self, items: Iterable[Any]) -> Iterator[Any]:
        """The page's items that the previous page did not already give."""
        page_ids: list[Any] = []
        tail = self._tail
        for item in items:
            item_id = item.get("id") if isinstance(item, dict) else None
            if item_id is None:  # nothing to recognise it by: yielded as it comes
                yield item
                continue
            page_ids.append(item_id)
            if item_id not in tail:
                yield item
        if self._previous_was_full and tail and tail.isdisjoint(page_ids):
            raise CrmTransientApiError(
                f"{self.what}: more than {self.overlap} records were deleted while the list was read (none of "
                f"the previous page's last {self.overlap} came back), so some may have been skipped; read it "
                "again (a retry of the task does)", service="pipedrive")
        self._tail = set(page_ids[-self.overlap:])
        self._previous_was_full = len(page_ids) >= self.limit
