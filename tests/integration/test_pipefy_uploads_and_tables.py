"""PipefyHook's attachment upload and table-record calls against the sandbox (moved from the
sandbox's own tests, which no longer use the provider)."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_crm.hooks.pipefy import PipefyHook

pytestmark = pytest.mark.integration


def test_presigned_upload(connections, sandbox):
    path = PipefyHook().upload_attachment("org-1", "contract.pdf", b"%PDF-1.4 sandbox")
    assert path.startswith("orgs/org-1/uploads/") and path.endswith("/contract.pdf")
    assert requests.get(f"{sandbox.url}/pipefy/_uploads/{path}", timeout=10).content == b"%PDF-1.4 sandbox"


def test_attachment_names_with_spaces_and_accents_are_stored_decoded(connections, sandbox):
    name = "Contrato assinado é final.pdf"
    path = PipefyHook().upload_attachment("org-1", name, b"%PDF-1.4 accents")
    assert path.startswith("orgs/org-1/uploads/") and path.endswith(f"/{name}")
    assert requests.get(f"{sandbox.url}/pipefy/_uploads/{path}", timeout=10).content == b"%PDF-1.4 accents"


def test_table_records_find_update_and_set_field(connections):
    hook = PipefyHook()
    record = hook.create_table_record("401", fields={"Company": "Findable Ltd", "Tier": "Gold"})
    found = hook.find_table_records("401", "company", "Findable Ltd")
    assert [r["id"] for r in found] == [record["id"]]
    hook.update_table_record(record["id"], table_id="401", fields={"Tier": "Silver"}, title="Findable")
    after = next(r for r in hook.iter_table_records("401") if r["id"] == record["id"])
    assert after["title"] == "Findable"
    assert {f["field"]["id"]: f["value"] for f in after["record_fields"]}["tier"] == "Silver"
