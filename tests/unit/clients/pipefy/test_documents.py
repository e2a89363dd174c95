"""Every GraphQL document the Pipefy client can send is valid against the emulator's schema, which
follows the public evidence of Pipefy's real schema (../shared/api-notes/pipefy.md); and every input
type a document names in its variables is one that evidence shows (else the input is written inline:
a wrong type name fails the whole document on the real API)."""

from __future__ import annotations

import pytest
from graphql import DocumentNode, GraphQLInputObjectType, get_named_type, validate
from graphql.language import NamedTypeNode, visit
from graphql.language.visitor import Visitor

from airflow_provider_crm.clients.pipefy import documents as client
from crm_sandbox.pipefy import SCHEMA

DOCUMENTS = {name: value for name, value in vars(client).items() if isinstance(value, DocumentNode)}

# Input types whose names Pipefy's own SDK, MCP server or API reference use in variable declarations.
# findRecords' search input and createPresignedUrl's input are not among them: written inline.
PROVEN_INPUT_TYPES = {
    "CreateCardInput", "UpdateCardInput", "MoveCardToPhaseInput", "DeleteCardInput", "UpdateCardFieldInput",
    "UpdateFieldsValuesInput", "NodeFieldValueInput", "CreateCommentInput", "CreateTableRecordInput",
    "UpdateTableRecordInput", "SetTableRecordFieldValueInput", "DeleteTableRecordInput", "FieldValueInput",
    "AdvancedSearch", "AdvancedSearchCondition", "FindCards",
}


def test_documents_are_collected_from_the_client_module():
    assert len(DOCUMENTS) >= 15 and "FIND_RECORDS" in DOCUMENTS


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_document_is_valid_against_the_schema(name):
    errors = validate(SCHEMA, DOCUMENTS[name])
    assert not errors, f"{name}: {[e.message for e in errors]}"


class _NamedTypes(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_named_type(self, node: NamedTypeNode, *_: object) -> None:
        self.names.add(node.name.value)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_input_types_named_in_variables_are_proven(name):
    collector = _NamedTypes()
    visit(DOCUMENTS[name], collector)
    inputs = {n for n in collector.names if isinstance(get_named_type(SCHEMA.get_type(n)), GraphQLInputObjectType)}
    assert inputs <= PROVEN_INPUT_TYPES, f"{name} names unproven input types {inputs - PROVEN_INPUT_TYPES}: " \
                                         "write the input inline"
