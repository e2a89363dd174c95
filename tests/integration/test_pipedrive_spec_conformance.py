"""Every request the Pipedrive hook sends (method, path, query parameters) is an operation of
Pipedrive's published OpenAPI specification."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlparse

import pytest
import yaml

from airflow_provider_crm.hooks.pipedrive import PipedriveHook

pytestmark = pytest.mark.integration
SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "api-specs"


@pytest.fixture(scope="module")
def specs():
    if not (SPECS / "pipedrive-v2-openapi.yaml").exists():
        pytest.skip(f"Pipedrive's OpenAPI specs are not at {SPECS}")
    return {v: yaml.safe_load((SPECS / f"pipedrive-{v}-openapi.yaml").read_text()) for v in ("v1", "v2")}


def find_operation(spec: dict, method: str, path: str) -> dict | None:
    parts = path.strip("/").split("/")
    best = None
    for template, item in spec["paths"].items():
        t_parts = template.strip("/").split("/")
        if len(t_parts) != len(parts):
            continue
        if all(t == p or t.startswith("{") for t, p in zip(t_parts, parts, strict=True)):
            op = item.get(method.lower())
            if op is None:
                continue
            score = template.count("{")
            if best is None or score < best[0]:
                params = [*item.get("parameters", []), *op.get("parameters", [])]
                best = (score, {"template": template, "params": {p["name"] for p in params if p.get("in") == "query"}})
    return best[1] if best else None


def test_every_hook_request_is_in_the_spec(connections, specs, tmp_path):
    hook = PipedriveHook()
    sent: list[tuple[str, str]] = []
    hook.session.hooks["response"].append(lambda r, *a, **k: sent.append((r.request.method, r.request.url)))

    # exercise every kind of request the hook makes
    hook.test_connection()
    for entity in ("deals", "persons", "organizations", "activities", "products", "pipelines", "stages", "leads",
                   "notes"):
        next(iter(hook.iter_records(entity)), None)
    list(hook.iter_records("deals", updated_since="2026-01-01T00:00:00Z", updated_until="2026-12-01T00:00:00Z",
                           sort_by="update_time", sort_direction="asc", status="deleted"))
    list(hook.iter_records("notes", updated_since="2026-01-01 00:00:00"))
    for entity in ("deals", "persons", "organizations", "products", "activities"):
        hook.field_map(entity)
    hook.field_map("leads")
    person = hook.create("persons", {"name": "Spec Check", "emails": [{"value": "spec@example.com"}]})
    hook.update("persons", person["id"], {"name": "Spec Checked"})
    hook.find_one("persons", "email", "spec@example.com")
    hook.find_one("deals", "External id", "EXT-000001")
    hook.search("organizations", "Org 1", fields="name")
    hook.delete("persons", person["id"])
    note = hook.create("notes", {"content": "spec", "deal_id": 1})
    hook.update("notes", note["id"], {"content": "spec 2"})
    hook.delete("notes", note["id"])
    lead = hook.create("leads", {"title": "Spec lead", "person_id": 1})
    hook.update("leads", lead["id"], {"title": "Spec lead 2"})
    hook.get("leads", lead["id"])
    hook.delete("leads", lead["id"])
    threads = list(hook.iter_mail_threads("inbox"))
    hook.thread_messages(threads[0]["id"])

    assert len(sent) > 30
    problems = []
    for method, url in sent:
        parsed = urlparse(url)
        path = parsed.path.split("/pipedrive", 1)[-1]
        version = "v2" if path.startswith("/api/v2/") else "v1"
        op = find_operation(specs[version], method, path.split(f"/api/{version}", 1)[1])
        if op is None:
            problems.append(f"{method} {path}: no such operation in the {version} spec")
            continue
        unknown = {name for name, _ in parse_qsl(parsed.query)} - op["params"]
        if unknown:
            problems.append(f"{method} {path} ({op['template']}): parameters not in the spec: {sorted(unknown)}")
        assert "api_token" not in parsed.query
    assert not problems, "\n".join(problems)
