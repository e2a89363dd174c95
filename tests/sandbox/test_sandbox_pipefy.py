"""The emulated Pipefy API over real HTTP: shapes, pagination, filters, value formats, errors, auth, limits."""

from __future__ import annotations

import base64
import json
import random
from datetime import datetime, timezone
from typing import Any

import pytest
import requests

from crm_sandbox.core import (
    DEFAULT_PIPEFY_CLIENT,
    DEFAULT_PIPEFY_TOKEN,
    SandboxConfig,
    token_key,
)
from crm_sandbox.pipefy_data import PipefyData

CARD = """
fragment C on Card {
  id uuid title url due_date createdAt updated_at finished_at done late expired
  current_phase { id name } pipe { id name } assignees { id name email } labels { id name }
  phases_history { phase { id name } firstTimeIn lastTimeOut }
  fields { field { id label type internal_id } name value array_value date_value datetime_value float_value
           filled_at updated_at }
}"""
CREATE = """mutation($i: CreateCardInput!) { createCard(input: $i) { card { ...C } } }""" + CARD
GET_CARD = "query($id: ID!) { card(id: $id) { ...C } }" + CARD


def gql(server: Any, query: str, variables: dict[str, Any] | None = None, token: str = DEFAULT_PIPEFY_TOKEN,
        status: int = 200, **body: Any) -> dict[str, Any]:
    resp = requests.post(f"{server.url}/pipefy/graphql", headers={"Authorization": f"Bearer {token}"},
                         json={"query": query, "variables": variables or {}, **body}, timeout=10)
    assert resp.status_code == status, resp.text
    return resp.json()


def ok(server: Any, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    body = gql(server, query, variables, **kw)
    assert "errors" not in body, body
    return body["data"]


def code_of(body: dict[str, Any]) -> str:
    return body["errors"][0]["extensions"]["code"]


def pipefy_state(server: Any) -> dict[str, Any]:
    return requests.get(f"{server.url}/pipefy/_state", timeout=10).json()


def advance(server: Any, seconds: float) -> None:
    requests.post(f"{server.url}/_sandbox/clock", json={"advance": seconds}, timeout=10).raise_for_status()


def new_card(server: Any, **fields: Any) -> dict[str, Any]:
    attrs = [{"field_id": k, "field_value": v} for k, v in {"customer_name": "Acme", **fields}.items()]
    return ok(server, CREATE, {"i": {"pipe_id": "301", "title": "Acme", "fields_attributes": attrs}})["createCard"]["card"]


def walk(server: Any, query: str, path: str, variables: dict[str, Any], first: int = 50) -> list[dict[str, Any]]:
    nodes, after = [], None
    while True:
        conn = ok(server, query, {**variables, "first": first, "after": after})[path]
        nodes += [e["node"] for e in conn["edges"]]
        if not conn["pageInfo"]["hasNextPage"]:
            return nodes
        after = conn["pageInfo"]["endCursor"]


# -- metadata ----------------------------------------------------------------------------------------
def test_pipe_phases_fields_labels_members(sandbox):
    pipe = ok(sandbox, """query($id: ID!) { pipe(id: $id) { id uuid name startFormPhaseId cards_count
        phases { id name cards_count done fields { id internal_id label type required options } }
        labels { id name } members { user { id name email } role_name }
        start_form_fields { id internal_id label required type options } } }""", {"id": "301"})["pipe"]
    names = [p["name"] for p in pipe["phases"]]
    assert names == ["Backlog", "Doing", "Review", "Done", "Cancelled"]
    assert [p["name"] for p in pipe["phases"] if p["done"]] == ["Done", "Cancelled"]
    assert pipe["startFormPhaseId"] not in {p["id"] for p in pipe["phases"]}  # the start form is not a phase
    assert pipe["cards_count"] == sum(p["cards_count"] for p in pipe["phases"]) == 5 * 30
    types = {f["type"] for f in pipe["start_form_fields"]} | {f["type"] for p in pipe["phases"] for f in p["fields"]}
    assert types >= {"short_text", "long_text", "email", "phone", "select", "radio_vertical", "radio_horizontal",
                     "cpf", "cnpj", "number", "currency", "date", "datetime", "due_date", "time",
                     "checklist_vertical", "checklist_horizontal", "assignee_select", "label_select", "connector",
                     "attachment"}
    review = next(p for p in pipe["phases"] if p["name"] == "Review")
    assert any(f["required"] for f in review["fields"])
    assert {lb["name"] for lb in pipe["labels"]} >= {"Urgent", "VIP"}
    assert all(m["user"]["email"] and m["role_name"] for m in pipe["members"])
    me = ok(sandbox, "{ me { id name email } }")["me"]
    assert me["id"] in {m["user"]["id"] for m in pipe["members"]}


def test_phase_counts_cards_and_move_targets(sandbox):
    phase = ok(sandbox, """{ phase(id: 3011) { id name cards_count cards_can_be_moved_to_phases { id name }
        cards(first: 10) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id current_phase { id } } } } } }""")["phase"]
    assert phase["cards_count"] == phase["cards"]["totalCount"] == 30
    assert [p["name"] for p in phase["cards_can_be_moved_to_phases"]] == ["Doing", "Cancelled"]
    assert len(phase["cards"]["edges"]) == 10 and phase["cards"]["pageInfo"]["hasNextPage"]
    assert {e["node"]["current_phase"]["id"] for e in phase["cards"]["edges"]} == {"3011"}
    missing = gql(sandbox, "{ phase(id: 1) { id } }")
    assert missing["data"] == {"phase": None} and code_of(missing) == "RESOURCE_NOT_FOUND"


def test_card_has_every_documented_field(sandbox):
    card_id = pipefy_state(sandbox)["cards"][0]["id"]
    card = ok(sandbox, GET_CARD, {"id": card_id})["card"]
    assert card["url"] == f"https://app.pipefy.com/open-cards/{card_id}"
    assert card["createdAt"].endswith("Z") and card["updated_at"] >= card["createdAt"]
    assert card["pipe"]["id"] == "301" and card["phases_history"][0]["phase"]["id"] == card["current_phase"]["id"]
    assert card["fields"] and all(f["value"] not in (None, "", "[]") for f in card["fields"])
    by_id = {f["field"]["id"]: f for f in card["fields"]}
    assert by_id["customer_name"]["name"] == "Customer name" and by_id["customer_name"]["field"]["type"] == "short_text"


# -- pagination --------------------------------------------------------------------------------------
def test_pagination_is_opaque_capped_and_stable_under_deletes(sandbox):
    q = """query($first: Int, $after: String) { allCards(pipeId: 302, first: $first, after: $after) {
        totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id } } } }"""
    page = ok(sandbox, q, {"first": 80})["allCards"]
    assert len(page["edges"]) == 50 and page["totalCount"] == 180  # `first` above 50 is capped silently
    cursor = page["pageInfo"]["endCursor"]
    assert isinstance(json.loads(base64.b64decode(cursor)), list)  # base64 JSON array, like Pipefy's
    # a card deleted on an earlier page does not shift the next one
    ok(sandbox, "mutation($i: DeleteCardInput!) { deleteCard(input: $i) { success } }",
       {"i": {"id": page["edges"][0]["node"]["id"]}})
    nxt = ok(sandbox, q, {"first": 50, "after": cursor})["allCards"]
    assert int(nxt["edges"][0]["node"]["id"]) > int(page["edges"][-1]["node"]["id"])
    ids = [n["id"] for n in walk(sandbox, q, "allCards", {}, first=37)]
    assert len(ids) == len(set(ids)) == 179
    backwards = ok(sandbox, """query($b: String) { allCards(pipeId: 302, last: 3, before: $b) {
        pageInfo { hasPreviousPage } edges { node { id } } } }""", {"b": cursor})["allCards"]
    assert [e["node"]["id"] for e in backwards["edges"]] == [e["node"]["id"] for e in page["edges"][46:49]]
    assert backwards["pageInfo"]["hasPreviousPage"]
    bad = gql(sandbox, q, {"first": 5, "after": "not-a-cursor"})
    assert code_of(bad) == "INVALID_INPUT" and bad["data"] == {"allCards": None}


# -- searches ----------------------------------------------------------------------------------------
ALL = """query($f: AdvancedSearch, $first: Int, $after: String) { allCards(pipeId: 301, filter: $f, first: $first,
  after: $after) { totalCount pageInfo { hasNextPage endCursor } edges { node { id updated_at createdAt } } } }"""


def test_allcards_filter_on_updated_at_and_createdat(sandbox):
    advance(sandbox, 3600)
    now = requests.get(f"{sandbox.url}/_sandbox/clock", timeout=10).json()["now"]
    iso_since = datetime.fromtimestamp(int(now), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    touched = new_card(sandbox)
    updated = ok(sandbox, "mutation($i: UpdateCardInput!) { updateCard(input: $i) { card { id updated_at } } }",
                 {"i": {"id": pipefy_state(sandbox)["cards"][5]["id"], "title": "renamed"}})["updateCard"]["card"]
    got = walk(sandbox, ALL, "allCards", {"f": {"field": "updated_at", "operator": "gte", "value": iso_since}})
    assert sorted(n["id"] for n in got) == sorted([touched["id"], updated["id"]])
    created = walk(sandbox, ALL, "allCards", {"f": {"field": "createdAt", "operator": "gte", "value": iso_since}})
    assert [n["id"] for n in created] == [touched["id"]]
    # AND narrows, OR widens; the result agrees with the full state
    cards = pipefy_state(sandbox)["cards"]
    mid = sorted(c["updated_at"] for c in cards if c["pipe"]["id"] == "301")[60]
    window = {"field": "updated_at", "operator": "lt", "value": mid,
              "AND": [{"field": "updated_at", "operator": "gte", "value": "2000-01-01T00:00:00Z"}]}
    expected = {c["id"] for c in cards if c["pipe"]["id"] == "301" and c["updated_at"] < mid}
    assert {n["id"] for n in walk(sandbox, ALL, "allCards", {"f": window})} == expected
    either = {"OR": [{"field": "updated_at", "operator": "lt", "value": mid},
                     {"field": "createdAt", "operator": "gte", "value": iso_since}]}
    assert {n["id"] for n in walk(sandbox, ALL, "allCards", {"f": either})} == expected | {touched["id"]}
    bad = gql(sandbox, ALL, {"f": {"field": "updated_at", "operator": "gt", "value": "yesterday"}})
    assert code_of(bad) == "INVALID_INPUT" and "yesterday" in bad["errors"][0]["message"]
    wrong_op = gql(sandbox, ALL, {"f": {"field": "updated_at", "operator": "like", "value": iso_since}})
    assert "like" in wrong_op["errors"][0]["message"]  # not one of equal gt gte lt lte


def test_cards_search_title_labels_assignees_ignore_done(sandbox):
    q = """query($s: CardSearch, $after: String, $first: Int) { cards(pipe_id: 301, search: $s, first: $first,
        after: $after) { pageInfo { hasNextPage endCursor } edges { node { id title done } } } }"""
    a = new_card(sandbox)
    b = new_card(sandbox)
    ok(sandbox, "mutation($i: UpdateCardInput!) { updateCard(input: $i) { card { id } } }",
       {"i": {"id": a["id"], "title": "Zebra onboarding", "assignee_ids": ["902"], "label_ids": ["503"]}})
    ok(sandbox, "mutation($i: UpdateCardInput!) { updateCard(input: $i) { card { id } } }",
       {"i": {"id": b["id"], "title": "zebra two", "assignee_ids": ["903"], "label_ids": ["503"]}})

    def ids(search: dict[str, Any]) -> set[str]:
        return {n["id"] for n in walk(sandbox, q, "cards", {"s": search})}

    assert ids({"title": "ZEBRA"}) == {a["id"], b["id"]}
    assert ids({"label_ids": ["503"], "assignee_ids": ["902"]}) == {a["id"]}
    assert ids({"title": "zebra", "ignore_ids": [a["id"]]}) == {b["id"]}
    done_ids = {c["id"] for c in pipefy_state(sandbox)["cards"] if c["done"] and c["pipe"]["id"] == "301"}
    assert done_ids and not ids({}) & done_ids and ids({"include_done": True}) >= done_ids


def test_findcards_is_exact_and_case_sensitive(sandbox):
    q = """query($s: FindCards!) { findCards(pipeId: 301, search: $s, first: 50) { edges { node { id } } } }"""
    card = new_card(sandbox, pipedrive_deal_id="Deal-77")
    new_card(sandbox, pipedrive_deal_id="Deal-770")
    found = ok(sandbox, q, {"s": {"fieldId": "pipedrive_deal_id", "fieldValue": "Deal-77"}})["findCards"]["edges"]
    assert [e["node"]["id"] for e in found] == [card["id"]]
    assert ok(sandbox, q, {"s": {"fieldId": "pipedrive_deal_id", "fieldValue": "deal-77"}})["findCards"]["edges"] == []
    assert code_of(gql(sandbox, q, {"s": {"fieldId": "customer_record", "fieldValue": "1"}})) == "INVALID_INPUT"
    assert code_of(gql(sandbox, q, {"s": {"fieldId": "nope", "fieldValue": "1"}})) == "RESOURCE_NOT_FOUND"


# -- field values ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field_id", "written", "expected"),
    [
        ("deal_value", "1235.32", {"value": "1.235,32", "float_value": 1235.32}),
        ("seats", "12", {"value": "12", "float_value": 12.0}),
        ("seats", "350,21", {"value": "350,21", "float_value": 350.21}),
        ("start_date", "01/08/2024", {"value": "01/08/2024", "date_value": "2024-08-01"}),
        ("start_date", "2024-08-01", {"value": "01/08/2024", "date_value": "2024-08-01"}),
        ("kickoff_at", "2024-08-08T16:46:00-03:00",
         {"value": "08/08/2024 19:46", "datetime_value": "2024-08-08T19:46:00Z"}),
        ("go_live", "2024-08-08T16:46:00Z", {"datetime_value": "2024-08-08T16:46:00Z"}),
        ("call_time", "09:30", {"value": "09:30"}),
        ("plan", "Pro", {"value": "Pro"}),
        ("checklist", ["Contract", "Training"], {"value": '["Contract", "Training"]',
                                                 "array_value": ["Contract", "Training"]}),
        ("owner", ["902"], {"value": '["Bo Builder"]', "array_value": ["902"]}),
        ("tags", ["501", "502"], {"value": '["Urgent", "VIP"]', "array_value": ["501", "502"]}),
        ("contract_file", ["orgs/o/uploads/u/a.pdf"], {"array_value": ["orgs/o/uploads/u/a.pdf"]}),
        ("tax_id", "123.456.789-09", {"value": "123.456.789-09"}),
    ],
)
def test_values_are_stored_and_read_back_in_pipefy_formats(sandbox, field_id, written, expected):
    card = new_card(sandbox, **{field_id: written})
    item = next(f for f in card["fields"] if f["field"]["id"] == field_id)
    assert {k: item[k] for k in expected} == expected
    assert isinstance(item["value"], str) and item["filled_at"]


def test_connector_reads_titles_and_ids(sandbox):
    record = pipefy_state(sandbox)["records"][0]
    card = new_card(sandbox, customer_record=[record["id"]])
    item = next(f for f in card["fields"] if f["field"]["id"] == "customer_record")
    assert item["array_value"] == [record["id"]] and json.loads(item["value"]) == [record["title"]]


@pytest.mark.parametrize(
    ("field_id", "written"),
    [("seats", "many"), ("start_date", "32/13/2024"), ("kickoff_at", "soon"), ("plan", "Gold"),
     ("checklist", ["Contract", "Cake"]), ("owner", ["12345"]), ("email", "not-an-email"), ("call_time", "25:00"),
     ("customer_record", ["999999999"]), ("customer_name", {"a": 1})],
)
def test_a_value_that_does_not_fit_is_invalid_input_naming_field_and_value(sandbox, field_id, written):
    attrs = [{"field_id": "customer_name", "field_value": "X"}, {"field_id": field_id, "field_value": written}]
    body = gql(sandbox, CREATE, {"i": {"pipe_id": "301", "fields_attributes": attrs}})
    assert body["data"] == {"createCard": None} and code_of(body) == "INVALID_INPUT"
    shown = written if isinstance(written, str) else json.dumps(written)
    assert shown in body["errors"][0]["message"] and '"' in body["errors"][0]["message"]


def test_card_fields_hold_only_filled_values(sandbox):
    card = new_card(sandbox, email="a@example.com")
    assert "email" in {f["field"]["id"] for f in card["fields"]}
    cleared = ok(sandbox, """mutation($i: UpdateCardFieldInput!) { updateCardField(input: $i) { success
        card { fields { field { id } } } } }""", {"i": {"card_id": card["id"], "field_id": "email", "new_value": None}})
    assert cleared["updateCardField"]["success"]
    assert "email" not in {f["field"]["id"] for f in cleared["updateCardField"]["card"]["fields"]}


# -- mutations ---------------------------------------------------------------------------------------
UFV = """mutation($i: UpdateFieldsValuesInput!) { updateFieldsValues(input: $i) { success userErrors { field message }
  updatedNode { ... on Card { id fields { field { id } value array_value } } ... on TableRecord { id title } } } }"""


def test_update_fields_values_operations_limit_and_soft_failures(sandbox):
    card = new_card(sandbox, checklist=["Contract"])

    def run(values: list[dict[str, Any]]) -> dict[str, Any]:
        return ok(sandbox, UFV, {"i": {"nodeId": card["id"], "values": values}})["updateFieldsValues"]

    def checklist(node: dict[str, Any]) -> list[str] | None:
        return next((f["array_value"] for f in node["fields"] if f["field"]["id"] == "checklist"), None)

    added = run([{"fieldId": "checklist", "value": ["Invoice"], "operation": "ADD"}, {"fieldId": "seats", "value": "3"}])
    assert added["success"] and checklist(added["updatedNode"]) == ["Contract", "Invoice"]
    removed = run([{"fieldId": "checklist", "value": ["Contract"], "operation": "REMOVE"}])
    assert checklist(removed["updatedNode"]) == ["Invoice"]
    replaced = run([{"fieldId": "checklist", "value": ["Training"]}])
    assert checklist(replaced["updatedNode"]) == ["Training"]
    soft = run([{"fieldId": "seats", "value": "99"}, {"fieldId": "seats_typo", "value": "1"},
                {"fieldId": "start_date", "value": "someday"}])
    assert soft["success"] is False and [e["field"] for e in soft["userErrors"]] == [["seats_typo"], ["start_date"]]
    assert "someday" in soft["userErrors"][1]["message"]
    seats = next(f["value"] for f in soft["updatedNode"]["fields"] if f["field"]["id"] == "seats")
    assert seats == "3"  # nothing of a failed call is applied
    too_many = gql(sandbox, UFV, {"i": {"nodeId": card["id"], "values": [{"fieldId": "seats", "value": "1"}] * 31}})
    assert too_many["data"] == {"updateFieldsValues": None} and code_of(too_many) == "INVALID_INPUT"
    assert "30" in too_many["errors"][0]["message"]
    record_id = pipefy_state(sandbox)["records"][0]["id"]
    on_record = ok(sandbox, UFV, {"i": {"nodeId": record_id, "values": [{"fieldId": "tier", "value": "Gold"}]}})
    assert on_record["updateFieldsValues"]["success"] and on_record["updateFieldsValues"]["updatedNode"]["id"] == record_id


def test_update_fields_values_takes_the_evidences_shapes(sandbox):
    """Pipefy's shapes (api-notes, "Checked against public evidence"): ``updatedNode`` is a union (no
    ``id`` without a fragment), ``value`` a list (one item for a single-value field), and the search
    operator enum is ``AdvancedSearchOperators``."""
    card = new_card(sandbox)
    plain = gql(sandbox, """mutation($i: UpdateFieldsValuesInput!) { updateFieldsValues(input: $i) {
        updatedNode { id } } }""", {"i": {"nodeId": card["id"], "values": [{"fieldId": "seats", "value": "4"}]}})
    assert "Cannot query field 'id' on type 'UpdatedNode'" in plain["errors"][0]["message"]
    listed = ok(sandbox, UFV, {"i": {"nodeId": card["id"], "values": [{"fieldId": "seats", "value": ["4"]}]}})
    seats = next(f["value"] for f in listed["updateFieldsValues"]["updatedNode"]["fields"] if f["field"]["id"] == "seats")
    assert seats == "4"
    two = ok(sandbox, UFV, {"i": {"nodeId": card["id"], "values": [{"fieldId": "seats", "value": ["4", "5"]}]}})
    assert two["updateFieldsValues"]["userErrors"][0]["field"] == ["seats"]
    old_enum = gql(sandbox, "query($o: SearchOperator) { me { id } }", {"o": "gte"})
    assert any("Unknown type 'SearchOperator'" in e["message"] for e in old_enum["errors"])
    new_enum = gql(sandbox, """query($p: ID!, $o: AdvancedSearchOperators) { allCards(pipeId: $p, first: 1,
        filter: {field: "title", operator: $o, value: "x"}) { totalCount } }""", {"p": "301", "o": "equal"})
    assert "errors" not in new_enum


def test_update_card_replaces_lists_and_moves_updated_at(sandbox):
    card = new_card(sandbox)
    advance(sandbox, 120)
    q = """mutation($i: UpdateCardInput!) { updateCard(input: $i) { card { id title due_date updated_at
        assignees { id } labels { id } } } }"""
    first = ok(sandbox, q, {"i": {"id": card["id"], "assignee_ids": ["901", "902"], "label_ids": ["501"]}})
    second = ok(sandbox, q, {"i": {"id": card["id"], "assignee_ids": ["903"], "title": "New title",
                                   "due_date": "2030-01-02T10:00:00Z"}})["updateCard"]["card"]
    assert first["updateCard"]["card"]["updated_at"] > card["updated_at"]
    assert [a["id"] for a in second["assignees"]] == ["903"] and [lb["id"] for lb in second["labels"]] == ["501"]
    assert second["title"] == "New title" and second["due_date"] == "2030-01-02T10:00:00Z"
    bad = gql(sandbox, q, {"i": {"id": card["id"], "due_date": "tomorrow"}})
    assert code_of(bad) == "INVALID_INPUT"


MOVE = """mutation($i: MoveCardToPhaseInput!) { moveCardToPhase(input: $i) { card { id done finished_at
  current_phase { id name } phases_history { phase { id } firstTimeIn lastTimeOut } } } }"""


def test_move_card_honours_connections_and_required_fields(sandbox):
    card = new_card(sandbox)
    forbidden = gql(sandbox, MOVE, {"i": {"card_id": card["id"], "destination_phase_id": "3014"}})
    assert forbidden["data"] == {"moveCardToPhase": None} and code_of(forbidden) == "INVALID_INPUT"
    assert "Backlog" in forbidden["errors"][0]["message"] and "Done" in forbidden["errors"][0]["message"]
    for target in ("3012", "3013"):
        moved = ok(sandbox, MOVE, {"i": {"card_id": card["id"], "destination_phase_id": target}})
    assert moved["moveCardToPhase"]["card"]["current_phase"]["name"] == "Review"
    history = moved["moveCardToPhase"]["card"]["phases_history"]
    assert [h["phase"]["id"] for h in history] == ["3011", "3012", "3013"] and history[0]["lastTimeOut"]
    blocked = gql(sandbox, MOVE, {"i": {"card_id": card["id"], "destination_phase_id": "3014"}})
    assert blocked["errors"][0]["message"] == (
        'Field "Review notes" is required! Please fill it and you\'ll be ready to go!')
    ok(sandbox, UFV, {"i": {"nodeId": card["id"], "values": [{"fieldId": "review_notes", "value": "fine"}]}})
    done = ok(sandbox, MOVE, {"i": {"card_id": card["id"], "destination_phase_id": "3014"}})["moveCardToPhase"]["card"]
    assert done["done"] and done["finished_at"]
    counts = {p["id"]: p["cards_count"] for p in pipefy_state(sandbox)["phases"]}
    assert counts["3014"] == 31 and counts["3011"] == 30


def test_delete_card_partial_data_and_permission_denied_afterwards(sandbox):
    card = new_card(sandbox)
    q = """mutation($a: DeleteCardInput!, $b: DeleteCardInput!) {
        first: deleteCard(input: $a) { success } second: deleteCard(input: $b) { success } }"""
    body = gql(sandbox, q, {"a": {"id": card["id"]}, "b": {"id": card["id"]}})
    assert body["data"] == {"first": {"success": True}, "second": None}
    error = body["errors"][0]
    assert error["message"] == f"Card not found with id: {card['id']}" and error["path"] == ["second"]
    assert error["locations"] and error["extensions"]["code"] == "RESOURCE_NOT_FOUND"
    assert error["extensions"]["correlation_id"]
    gone = gql(sandbox, GET_CARD, {"id": card["id"]})
    assert gone["data"] == {"card": None} and code_of(gone) == "PERMISSION_DENIED"


def test_comment_and_presigned_upload(sandbox):
    card = new_card(sandbox)
    comment = ok(sandbox, "mutation($i: CreateCommentInput!) { createComment(input: $i) { comment { id text } } }",
                 {"i": {"card_id": card["id"], "text": "Kickoff booked"}})["createComment"]["comment"]
    assert comment["text"] == "Kickoff booked"
    assert any(c["id"] == comment["id"] for c in pipefy_state(sandbox)["comments"])
    urls = ok(sandbox, """mutation($i: CreatePresignedUrlInput!) { createPresignedUrl(input: $i) { url downloadUrl } }""",
              {"i": {"organizationId": "77", "fileName": "contract.pdf", "contentType": "application/pdf",
                     "contentLength": 9}})["createPresignedUrl"]
    assert requests.put(urls["url"], data=b"%PDF-1.4\n", timeout=10).status_code == 200
    assert requests.get(urls["downloadUrl"], timeout=10).content == b"%PDF-1.4\n"
    path = urls["url"].split("/pipefy/_uploads/", 1)[1]
    assert path.startswith("orgs/77/uploads/") and path.endswith("/contract.pdf")
    attached = ok(sandbox, UFV, {"i": {"nodeId": card["id"], "values": [{"fieldId": "contract_file", "value": [path]}]}})
    assert attached["updateFieldsValues"]["success"]
    later = ok(sandbox, """mutation($i: CreatePresignedUrlInput!) { createPresignedUrl(input: $i) { url } }""",
               {"i": {"organizationId": "77", "fileName": "late.pdf"}})["createPresignedUrl"]["url"]
    advance(sandbox, 16 * 60)
    assert requests.put(later, data=b"x", timeout=10).status_code == 403  # links expire after 15 minutes


# -- tables ------------------------------------------------------------------------------------------
def test_tables_records_and_their_mutations(sandbox):
    table = ok(sandbox, "{ table(id: 401) { id name table_records_count table_fields { id label type required options } } }")["table"]
    assert table["table_records_count"] == 60 and {"company", "tier"} <= {f["id"] for f in table["table_fields"]}
    q = """query($first: Int, $after: String) { table_records(table_id: 401, first: $first, after: $after) {
        totalCount pageInfo { hasNextPage endCursor } edges { node { id title record_fields { name value field { id } } } } } }"""
    records = walk(sandbox, q, "table_records", {}, first=25)
    assert len({r["id"] for r in records}) == 60
    created = ok(sandbox, """mutation($i: CreateTableRecordInput!) { createTableRecord(input: $i) {
        table_record { id title record_fields { field { id } value float_value date_value } } } }""",
                 {"i": {"table_id": "401", "title": "Initech", "fields_attributes": [
                     {"field_id": "company", "field_value": "Initech"}, {"field_id": "employees", "field_value": "250"},
                     {"field_id": "since", "field_value": "15/03/2021"}]}})["createTableRecord"]["table_record"]
    values = {f["field"]["id"]: f for f in created["record_fields"]}
    assert values["employees"]["float_value"] == 250.0 and values["since"]["date_value"] == "2021-03-15"
    missing = gql(sandbox, """mutation($i: CreateTableRecordInput!) { createTableRecord(input: $i) { table_record { id } } }""",
                  {"i": {"table_id": "401", "fields_attributes": [{"field_id": "tier", "field_value": "Gold"}]}})
    assert code_of(missing) == "RECORD_INVALID" and '"Company" is required' in missing["errors"][0]["message"]
    # Pipefy's shape (api-notes, "Checked against public evidence"): a String table id, the search written
    # inline, a CardConnection whose nodes have `fields`
    find = """query($v: String!) { findRecords(tableId: "401", search: {fieldId: "company", fieldValue: $v}, first: 10)
              { edges { node { id fields { name value } } } } }"""
    nodes = [e["node"] for e in ok(sandbox, find, {"v": "Initech"})["findRecords"]["edges"]]
    assert [n["id"] for n in nodes] == [created["id"]] and {"name": "Company", "value": "Initech"} in nodes[0]["fields"]
    # what the client sent until 2026-12: an ID table id, a named input type, `record_fields`: refused
    old = """query($t: ID!, $s: FindRecords!) { findRecords(tableId: $t, search: $s) { edges { node { id
             record_fields { name } } } } }"""
    refused = gql(sandbox, old, {"t": "401", "s": {"fieldId": "company", "fieldValue": "Initech"}}, status=200)
    messages = " ".join(e["message"] for e in refused["errors"])
    assert "Unknown type 'FindRecords'" in messages and "record_fields" in messages
    ok(sandbox, "mutation($i: UpdateTableRecordInput!) { updateTableRecord(input: $i) { table_record { id } } }",
       {"i": {"id": created["id"], "title": "Initech Corp"}})
    ok(sandbox, """mutation($i: SetTableRecordFieldValueInput!) { setTableRecordFieldValue(input: $i) {
        table_record { id } } }""", {"i": {"table_record_id": created["id"], "field_id": "tier", "value": "Silver"}})
    one = ok(sandbox, "query($id: ID!) { table_record(id: $id) { id title record_fields { name value field { id } } } }",
             {"id": created["id"]})["table_record"]
    assert one["title"] == "Initech Corp" and {f["field"]["id"]: f["value"] for f in one["record_fields"]}["tier"] == "Silver"
    bad = gql(sandbox, """mutation($i: SetTableRecordFieldValueInput!) { setTableRecordFieldValue(input: $i) {
        table_record { id } } }""", {"i": {"table_record_id": created["id"], "field_id": "tier", "value": "Bronze"}})
    assert code_of(bad) == "INVALID_INPUT" and "Bronze" in bad["errors"][0]["message"]
    assert ok(sandbox, "mutation($i: DeleteTableRecordInput!) { deleteTableRecord(input: $i) { success } }",
              {"i": {"id": created["id"]}})["deleteTableRecord"]["success"]
    gone = gql(sandbox, "query($id: ID!) { table_record(id: $id) { id } }", {"id": created["id"]})
    assert code_of(gone) == "RECORD_NOT_FOUND"


# -- errors and auth ---------------------------------------------------------------------------------
def test_validation_errors_for_unknown_fields_and_arguments(sandbox):
    unknown = gql(sandbox, "{ me { id shoeSize } }")
    assert "data" not in unknown or unknown["data"] is None
    assert unknown["errors"][0]["message"] == "Cannot query field 'shoeSize' on type 'User'."
    assert unknown["errors"][0]["locations"] == [{"line": 1, "column": 11}]
    bad_arg = gql(sandbox, "{ allCards(pipeId: 301, colour: 1) { totalCount } }")
    assert "colour" in bad_arg["errors"][0]["message"]
    syntax = gql(sandbox, "{ me { id ")
    assert "Syntax Error" in syntax["errors"][0]["message"]
    assert ok(sandbox, "{ me { id } }", operationName=None)["me"]["id"]  # a cached document still validates


def test_auth_requires_bearer_and_a_valid_token(sandbox):
    url = f"{sandbox.url}/pipefy/graphql"
    for headers in ({}, {"Authorization": DEFAULT_PIPEFY_TOKEN}, {"Authorization": f"Token {DEFAULT_PIPEFY_TOKEN}"},
                    {"Authorization": "Bearer wrong"}):
        resp = requests.post(url, headers=headers, json={"query": "{ me { id } }"}, timeout=10)
        assert resp.status_code == 401 and resp.json()["errors"][0]["extensions"]["code"] == "UNAUTHORIZED"


def _oauth(server: Any, **kw: Any) -> requests.Response:
    return requests.post(f"{server.url}/pipefy/oauth/token", timeout=10, **kw)


def test_oauth_client_credentials_in_every_form(sandbox):
    client_id, secret = DEFAULT_PIPEFY_CLIENT
    creds = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    answers = [_oauth(sandbox, data=creds), _oauth(sandbox, json=creds),
               _oauth(sandbox, data={"grant_type": "client_credentials"}, auth=(client_id, secret))]
    for resp in answers:
        assert resp.status_code == 200
        body = resp.json()
        assert body["token_type"] == "bearer" and body["expires_in"] > 0 and body["created_at"] > 0
        assert ok(sandbox, "{ me { id email } }", token=body["access_token"])["me"]["email"]
    assert _oauth(sandbox, data={**creds, "client_secret": "nope"}).status_code == 401
    assert _oauth(sandbox, data={**creds, "grant_type": "password"}).status_code == 400


def test_service_account_token_expiry_plan_and_private_pipe(sandbox):
    requests.post(f"{sandbox.url}/pipefy/_service_accounts", json={
        "client_id": "short", "client_secret": "s3cret", "plan": "starter", "expires_in": 60}, timeout=10).raise_for_status()
    body = _oauth(sandbox, data={"grant_type": "client_credentials", "client_id": "short",
                                 "client_secret": "s3cret"}).json()
    token = body["access_token"]
    assert body["expires_in"] == 60
    denied = gql(sandbox, "{ pipe(id: 303) { id name } }", token=token)
    assert denied["data"] == {"pipe": None} and code_of(denied) == "PERMISSION_DENIED"
    assert denied["errors"][0]["message"] == "Permission denied"
    assert ok(sandbox, "{ pipe(id: 303) { name } }")["pipe"]["name"] == "Private finance"  # the personal token
    private_card = next(c["id"] for c in pipefy_state(sandbox)["cards"] if c["pipe"]["id"] == "303")
    assert code_of(gql(sandbox, GET_CARD, {"id": private_card}, token=token)) == "PERMISSION_DENIED"
    advance(sandbox, 61)
    gql(sandbox, "{ me { id } }", token=token, status=401)


# -- limits ------------------------------------------------------------------------------------------
def test_sliding_window_429_then_block_until_the_clock_passes_it(make_sandbox):
    server = make_sandbox(pipefy_requests_per_window=20, pipefy_window_seconds=30, pipefy_block_seconds=300)
    polite = "polite-token"
    requests.post(f"{server.url}/_sandbox/tokens", json={"service": "pipefy", "token": polite}, timeout=10)
    # a sliding window, not a fixed one: 15 now, 5 twenty seconds later fill it; the next one is over
    for _ in range(15):
        ok(server, "query Ping { me { id } }", token=polite)
    advance(server, 20)
    for _ in range(5):
        ok(server, "{ me { id } }", token=polite)
    advance(server, 11)  # the first 15 leave the window
    for _ in range(15):
        ok(server, "{ me { id } }", token=polite)
    # the default token goes over
    statuses = [requests.post(f"{server.url}/pipefy/graphql", headers={"Authorization": f"Bearer {DEFAULT_PIPEFY_TOKEN}"},
                              json={"query": "{ me { id } }"}, timeout=10) for _ in range(22)]
    assert [r.status_code for r in statuses] == [200] * 20 + [429, 429]
    assert int(statuses[20].headers["Retry-After"]) == 300
    assert statuses[20].json()["errors"][0]["extensions"]["code"] == "TOO_MANY_REQUESTS"
    advance(server, 200)
    gql(server, "{ me { id } }", status=429)  # still blocked, although the window is long empty
    advance(server, 101)
    ok(server, "{ me { id } }")
    counters = requests.get(f"{server.url}/_sandbox/counters", timeout=10).json()
    assert counters["rate_limited"]["pipefy"] == 3
    assert counters["max_in_window"][f"pipefy:{token_key(polite)}"] == 20
    assert counters["max_in_window"][f"pipefy:{token_key(DEFAULT_PIPEFY_TOKEN)}"] == 21
    assert counters["by_endpoint"]["pipefy Ping"] == 15 and counters["by_endpoint"]["pipefy me"] >= 20


def test_monthly_quota_per_plan_resets_next_month(sandbox):
    requests.post(f"{sandbox.url}/_sandbox/tokens", json={"service": "pipefy", "token": "starter-q", "plan": "starter"},
                  timeout=10)
    for _ in range(20):
        ok(sandbox, "{ me { id } }", token="starter-q")
    over = gql(sandbox, "{ me { id } }", token="starter-q")  # HTTP 200 (unconfirmed on the real API)
    assert over["data"] is None and code_of(over) == "USAGE_LIMIT_EXCEEDED"
    assert "starter" in over["errors"][0]["message"] and over["errors"][0]["extensions"]["correlation_id"]
    ok(sandbox, "{ me { id } }")  # other tokens are not affected
    advance(sandbox, 32 * 86400)
    ok(sandbox, "{ me { id } }", token="starter-q")


# -- state, snapshot, seed ---------------------------------------------------------------------------
def test_state_route_snapshot_and_restore(make_sandbox, tmp_path):
    path = tmp_path / "sandbox.snapshot"
    first = make_sandbox(snapshot=str(path))
    card = new_card(first, pipedrive_deal_id="SNAP-1")
    requests.post(f"{first.url}/_sandbox/snapshot", timeout=10).raise_for_status()
    second = make_sandbox(snapshot=str(path))
    state = pipefy_state(second)
    assert {"pipes", "phases", "cards", "tables", "records", "comments"} <= set(state)
    restored = next(c for c in state["cards"] if c["id"] == card["id"])
    assert {f["field"]["id"]: f["value"] for f in restored["fields"]}["pipedrive_deal_id"] == "SNAP-1"
    found = ok(second, """{ findCards(pipeId: 301, search: {fieldId: "pipedrive_deal_id", fieldValue: "SNAP-1"}) {
        edges { node { id } } } }""")["findCards"]["edges"]
    assert [e["node"]["id"] for e in found] == [card["id"]]  # indexes are rebuilt after a restore
    assert ok(second, "{ phase(id: 3011) { cards_count } }")["phase"]["cards_count"] == 31
    assert ok(second, CREATE, {"i": {"pipe_id": "301", "title": "after", "fields_attributes": [
        {"field_id": "customer_name", "field_value": "x"}]}})["createCard"]["card"]["id"] != card["id"]


def test_seed_is_deterministic_and_sized_by_config():
    def make(seed: int) -> PipefyData:
        return PipefyData(SandboxConfig(seed=seed, pipefy_cards_per_phase=7, pipefy_table_records=5),
                          random.Random(seed), now=1_750_000_000.0)

    a, b, c = make(1), make(1), make(2)
    assert a.state_json() == b.state_json() and a.state_json()["cards"] != c.state_json()["cards"]
    assert all(len(a.by_phase[p]) == 7 for p in a.pipes["302"]["phase_ids"])
    assert len(a.by_table["401"]) == 5


def test_memoized_card_answers_follow_writes_and_skip_clock_fields(make_sandbox):
    server = make_sandbox(prerender=True)
    plain = """query($id: ID!) { phase(id: $id) { cards(first: 50) { edges { node { id title
        fields { field { id } value } } } } } }"""
    first = ok(server, plain, {"id": "3011"})["phase"]["cards"]["edges"]
    assert ok(server, plain, {"id": "3011"})["phase"]["cards"]["edges"] == first
    card_id = first[0]["node"]["id"]
    ok(server, """mutation($i: UpdateCardInput!) { updateCard(input: $i) { card { id } } }""",
       {"i": {"id": card_id, "title": "Renamed by a write"}})
    again = ok(server, plain, {"id": "3011"})["phase"]["cards"]["edges"]
    assert again[0]["node"]["title"] == "Renamed by a write"
    # `late` moves with the clock: a document asking for it is answered afresh every time
    late = """query($id: ID!) { card(id: $id) { id late } }"""
    due = ok(server, """mutation($i: UpdateCardInput!) { updateCard(input: $i) { card { id } } }""",
             {"i": {"id": card_id, "due_date": "2030-01-01T00:00:00Z"}})
    assert due and ok(server, late, {"id": card_id})["card"]["late"] is False
    advance(server, 10 * 365 * 86400)
    assert ok(server, late, {"id": card_id})["card"]["late"] is True
