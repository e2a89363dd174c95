"""The sandbox's own reading of Pipedrive's endpoint costs: the same numbers as the published specs,
looked up without the provider (a mistake in the client's table must not hide on both sides)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crm_sandbox.pipedrive_costs import UNKNOWN_COST, token_cost

SPECS = Path(__file__).resolve().parents[2].parent / "shared" / "api-specs"
TABLE = Path(__file__).resolve().parents[2] / "crm_sandbox" / "pipedrive_costs.json"


def test_the_table_is_the_specs_x_token_cost():
    if not (SPECS / "pipedrive-v2-openapi.yaml").exists():
        pytest.skip(f"Pipedrive's OpenAPI specs are not at {SPECS}")
    expected = {}
    for version in ("v1", "v2"):
        spec = yaml.safe_load((SPECS / f"pipedrive-{version}-openapi.yaml").read_text())
        expected[version] = {f"{method.upper()} {path}": int(op["x-token-cost"])
                             for path, item in spec["paths"].items() for method, op in item.items()
                             if isinstance(op, dict) and "x-token-cost" in op}
    assert json.loads(TABLE.read_text()) == expected, "run scripts/gen_pipedrive_costs.py"


@pytest.mark.parametrize(("method", "path", "version", "cost"), [
    ("GET", "/deals", "v2", 10),
    ("GET", "/deals/42", "v2", 1),
    ("get", "deals/42/", "v2", 1),
    ("POST", "/deals", "v2", 5),
    ("GET", "/deals/archived", "v2", 20),  # the exact template, not /deals/{id}
    ("GET", "/persons/search?term=x", "v2", 20),
    ("GET", "/notes", "v1", 20),
    ("GET", "/no/such/endpoint", "v2", UNKNOWN_COST),
])
def test_lookup(method, path, version, cost):
    assert token_cost(method, path, version) == cost


def test_the_emulator_imports_nothing_from_the_provider():
    code = ("import sys, crm_sandbox.__main__, crm_sandbox.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow_provider_crm'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
