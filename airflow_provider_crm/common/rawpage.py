"""A page of records kept as the JSON text of its answer until the writer takes it."""

from __future__ import annotations

from typing import Any

import msgspec

from airflow_provider_crm.common import jsoncodec


class RawPage:
    """The records of one answer as the JSON text of their array, optionally cut to the first ``count``.

    Pages wait between the threads that fetch them and the one that writes them, several per reader.
    As text, 500 deals take the 0.56 MB of the answer; decoded (even shallowly) about 1.6 MB, which is
    what bounded how many readers an export could run under 200 MB. Decoding happens once, in the
    writer, with :meth:`records`.

    :param data: the JSON array (``msgspec.Raw`` or bytes); ``null`` is an empty page.
    :param count: keep only the first ``count`` records (None: all).
    """

    __slots__ = ("_count", "data")

    def __init__(self, data: bytes | msgspec.Raw, count: int | None = None) -> None:
        self.data = data
        self._count = count

    def update_times(self) -> list[Any]:
        """Each kept record's ``update_time`` (None where it has none), without decoding the rest."""
        times = jsoncodec.update_times(self.data)
        return times if self._count is None else times[:self._count]

    def head(self, count: int) -> RawPage:
        """The page cut to its first ``count`` records."""
        return RawPage(self.data, count if self._count is None else min(count, self._count))

    def __getitem__(self, cut: slice) -> RawPage:
        """``page[:n]``: :meth:`head` (what the slicing cuts a page with)."""
        if cut.start not in (None, 0) or cut.step not in (None, 1) or cut.stop is None or cut.stop < 0:
            raise ValueError("a RawPage is only cut to its first n records: page[:n]")
        return self.head(cut.stop)

    def records(self, shallow: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """The kept records, with only the ``shallow`` keys' values decoded if given (see
        :func:`~airflow_provider_crm.common.jsoncodec.shallow_items`)."""
        items = (jsoncodec.shallow_items(self.data, shallow) if shallow is not None
                 else list(jsoncodec.iter_items(self.data)))
        return items if self._count is None else items[:self._count]
