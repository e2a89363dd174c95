"""Pipefy's GraphQL documents: parsed once, values always passed as variables.

Every document here is checked against the emulator's schema, which follows the public evidence of
Pipefy's real schema (tests/unit/clients/pipefy/test_documents.py collects them from this module).
"""

from __future__ import annotations

from graphql import DocumentNode, parse, print_ast

CARD_FIELDS = """
fragment CardParts on Card {
  id title url due_date createdAt updated_at finished_at done
  current_phase { id name }
  pipe { id name }
  assignees { id name email }
  labels { id name }
  fields { field { id label type internal_id } name value array_value date_value datetime_value float_value
           filled_at updated_at }
}
"""
ME = parse("query Me { me { id name email } }")
PIPE = parse(
    """
query Pipe($id: ID!) {
  pipe(id: $id) {
    id uuid name startFormPhaseId
    phases { id name cards_count done fields { id internal_id label type required options } }
    labels { id name }
    start_form_fields { id internal_id label required type options }
  }
}"""
)
PHASE = parse(
    """
query Phase($id: ID!) {
  phase(id: $id) { id name cards_count done cards_can_be_moved_to_phases { id name }
                   fields { id internal_id label type required options } }
}"""
)
CARD = parse(
    CARD_FIELDS
    + """
query Card($id: ID!) { card(id: $id) { ...CardParts phases_history { phase { id name } firstTimeIn lastTimeOut } } }"""
)
ALL_CARDS = parse(
    CARD_FIELDS
    + """
query AllCards($pipeId: ID!, $first: Int, $after: String, $filter: AdvancedSearch) {
  allCards(pipeId: $pipeId, first: $first, after: $after, filter: $filter) {
    pageInfo { hasNextPage endCursor }
    edges { node { ...CardParts } }
  }
}"""
)
PHASE_CARDS = parse(
    CARD_FIELDS
    + """
query PhaseCards($id: ID!, $first: Int, $after: String) {
  phase(id: $id) {
    id
    cards(first: $first, after: $after) {
      pageInfo { hasNextPage endCursor }
      edges { node { ...CardParts phases_history { phase { id } firstTimeIn } } }
    }
  }
}"""
)
FIND_CARDS = parse(
    CARD_FIELDS
    + """
query FindCards($pipeId: ID!, $search: FindCards!, $first: Int, $after: String) {
  findCards(pipeId: $pipeId, search: $search, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { node { ...CardParts } }
  }
}"""
)
CREATE_CARD = parse(
    """
mutation CreateCard($input: CreateCardInput!) { createCard(input: $input) { card { id title url current_phase { id name } } } }"""
)
UPDATE_CARD = parse(
    """
mutation UpdateCard($input: UpdateCardInput!) { updateCard(input: $input) { card { id title updated_at } } }"""
)
UPDATE_FIELDS_VALUES = parse(
    """
mutation UpdateFieldsValues($input: UpdateFieldsValuesInput!) {
  updateFieldsValues(input: $input) { success userErrors { field message } }
}"""
)
MOVE_CARD = parse(
    """
mutation MoveCard($input: MoveCardToPhaseInput!) {
  moveCardToPhase(input: $input) { card { id current_phase { id name } } }
}"""
)
DELETE_CARD = parse("mutation DeleteCard($input: DeleteCardInput!) { deleteCard(input: $input) { success } }")
CREATE_COMMENT = parse(
    "mutation CreateComment($input: CreateCommentInput!) { createComment(input: $input) { comment { id } } }"
)
TABLE = parse(
    """
query Table($id: ID!) {
  table(id: $id) { id name table_records_count table_fields { id label type required options } }
}"""
)
TABLE_RECORDS = parse(
    """
query TableRecords($id: ID!, $first: Int, $after: String) {
  table_records(table_id: $id, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { node { id title created_at updated_at record_fields { name value array_value date_value datetime_value float_value field { id label type } } } }
  }
}"""
)
# findRecords takes a String table id and answers a CardConnection whose nodes carry `fields`; its
# search input's type name is unproven, so the object is written inline (as Pipefy's own SDK does).
# Evidence: ../shared/api-notes/pipefy.md, "Checked against public evidence".
FIND_RECORDS = parse(
    """
query FindRecords($tableId: String!, $fieldId: String!, $fieldValue: String!, $first: Int, $after: String) {
  findRecords(tableId: $tableId, search: {fieldId: $fieldId, fieldValue: $fieldValue}, first: $first, after: $after) {
    pageInfo { hasNextPage endCursor }
    edges { node { id title createdAt updated_at fields { name value array_value date_value datetime_value float_value field { id label type } } } }
  }
}"""
)
CREATE_TABLE_RECORD = parse(
    """
mutation CreateTableRecord($input: CreateTableRecordInput!) {
  createTableRecord(input: $input) { table_record { id title } }
}"""
)
UPDATE_TABLE_RECORD = parse(
    """
mutation UpdateTableRecord($input: UpdateTableRecordInput!) { updateTableRecord(input: $input) { table_record { id } } }"""
)
SET_TABLE_RECORD_FIELD = parse(
    """
mutation SetTableRecordFieldValue($input: SetTableRecordFieldValueInput!) {
  setTableRecordFieldValue(input: $input) { table_record { id } }
}"""
)
CREATE_PRESIGNED_URL = parse(
    """
mutation CreatePresignedUrl($organizationId: ID!, $fileName: String!, $contentType: String, $contentLength: Int) {
  createPresignedUrl(input: {organizationId: $organizationId, fileName: $fileName, contentType: $contentType,
                             contentLength: $contentLength}) { url downloadUrl }
}"""
)
DELETE_TABLE_RECORD = parse(
    "mutation DeleteTableRecord($input: DeleteTableRecordInput!) { deleteTableRecord(input: $input) { success } }"
)

_QUERY_TEXTS: dict[int, tuple[DocumentNode, str]] = {}


def query_text(document: DocumentNode) -> str:
    """A document's text, printed once per document (printing costs more than sending it)."""
    known = _QUERY_TEXTS.get(id(document))
    if known is None or known[0] is not document:
        if len(_QUERY_TEXTS) > 256:
            _QUERY_TEXTS.clear()
        known = _QUERY_TEXTS[id(document)] = (document, print_ast(document))
    return known[1]
