"""Reading Pipedrive's lists (clients/pipedrive/pagination.py, the client's pages): one page ahead, a
failing page, offset pages overlapping so that deletions mid-read skip nothing."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import responses
from responses import matchers

from airflow_provider_crm.common.errors import CrmTransientApiError
from airflow_provider_crm.hooks.pipedrive import PipedriveHook


def _conn(monkeypatch, conn_id: str, **fields) -> None:
    body = {"conn_type": "pipedrive", "extra": {"rate_limit_store": "memory", **fields.pop("extra", {})}, **fields}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))


@responses.activate
def test_next_page_is_requested_while_this_one_is_consumed(monkeypatch):
    _conn(monkeypatch, "pd", password="tok", host="https://pd.test")
    for cursor, nxt in ((None, "c2"), ("c2", "c3"), ("c3", None)):
        match = [matchers.query_param_matcher({"limit": "500", **({"cursor": cursor} if cursor else {})})]
        responses.get("https://pd.test/api/v2/deals", match=match,
                      json={"success": True, "data": [{"id": cursor or "c1"}], "additional_data": {"next_cursor": nxt}})
    pages = PipedriveHook("pd").paginate("v2", "/deals")
    assert next(pages) == {"id": "c1"}
    deadline = datetime.now(timezone.utc).timestamp() + 5
    while len(responses.calls) < 2 and datetime.now(timezone.utc).timestamp() < deadline:
        pass
    assert len(responses.calls) >= 2  # page 2 left before page 1 was done with
    assert [r["id"] for r in pages] == ["c2", "c3"]
    assert len(responses.calls) == 3


@responses.activate
def test_a_failing_page_raises_after_the_pages_before_it_and_the_reader_stops(monkeypatch):
    import threading

    _conn(monkeypatch, "pd", password="tok", host="https://pd.test")
    responses.get("https://pd.test/api/v2/deals", match=[matchers.query_param_matcher({"limit": "500"})],
                  json={"success": True, "data": [{"id": 1}, {"id": 2}], "additional_data": {"next_cursor": "c2"}})
    responses.get("https://pd.test/api/v2/deals",
                  match=[matchers.query_param_matcher({"limit": "500", "cursor": "c2"})],
                  status=400, json={"success": False, "error": "Validation failed: cursor: Invalid cursor"})
    got = []
    with pytest.raises(Exception, match="Invalid cursor"):
        for record in PipedriveHook("pd").paginate("v2", "/deals"):
            got.append(record["id"])
    assert got == [1, 2]
    assert not [t for t in threading.enumerate() if t.name == "crm-page"]


class _OffsetList:
    """A v1 list read by offset, changed by ``change`` once its first page has been served."""

    def __init__(self, n: int, change) -> None:
        self.ids, self.change, self.calls = list(range(1, n + 1)), change, 0

    def __call__(self, request):
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(request.url).query)
        start, limit = int(query.get("start", ["0"])[0]), int(query["limit"][0])
        page = self.ids[start:start + limit]
        more = start + limit < len(self.ids)
        self.calls += 1
        if self.calls == 1:
            self.change(self.ids)
        body = {"success": True, "data": [{"id": i} for i in page], "additional_data": {"pagination": {
            "start": start, "limit": limit, "more_items_in_collection": more, "next_start": start + limit}}}
        return 200, {}, json.dumps(body)


@responses.activate
def test_records_deleted_during_an_offset_read_do_not_make_it_skip_any(monkeypatch):
    _conn(monkeypatch, "pd", password="tok", host="https://pd.test")
    # three notes near the start are deleted after the first page: every later note moves down three
    # places, and a read resuming at offset 500 would never see notes 501-503
    notes = _OffsetList(1300, lambda ids: [ids.remove(i) for i in (2, 3, 4)])
    responses.add_callback(responses.GET, "https://pd.test/api/v1/notes", callback=notes)
    got = [n["id"] for n in PipedriveHook("pd").iter_records("notes")]
    assert sorted(got) == list(range(1, 1301))  # 2-4 were read before they were deleted


@responses.activate
def test_more_deletions_than_the_overlap_fail_the_read_instead_of_leaving_a_gap(monkeypatch):
    _conn(monkeypatch, "pd", password="tok", host="https://pd.test")
    notes = _OffsetList(1300, lambda ids: [ids.remove(i) for i in range(2, 27)])  # 25 deleted
    responses.add_callback(responses.GET, "https://pd.test/api/v1/notes", callback=notes)
    with pytest.raises(CrmTransientApiError, match=r"GET /api/v1/notes: more than 20 records were deleted"):
        list(PipedriveHook("pd").iter_records("notes"))


@responses.activate
def test_a_record_entering_an_offset_list_before_the_offset_loses_nothing(monkeypatch):
    _conn(monkeypatch, "pd", password="tok", host="https://pd.test")
    notes = _OffsetList(1300, lambda ids: ids.insert(10, 5000))  # e.g. updated into an updated_since filter
    responses.add_callback(responses.GET, "https://pd.test/api/v1/notes", callback=notes)
    got = [n["id"] for n in PipedriveHook("pd").iter_records("notes")]
    assert set(range(1, 1301)) <= set(got)
