"""Regenerate both readings of Pipedrive's endpoint costs from its published OpenAPI specs.

Usage: python scripts/gen_pipedrive_costs.py [path/to/api-specs]
Each operation's ``x-token-cost`` is its charge against the company's daily token budget. Two files
are written from the specs, one for each side of the wire, so that neither reads the other's table:

- ``airflow_provider_crm/clients/pipedrive/costs.json`` for the client (``[method, path, cost]`` rows);
- ``crm_sandbox/pipedrive_costs.json`` for the emulator (``{"METHOD /path": cost}`` per version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SPECS = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "api-specs"
METHODS = {"get", "post", "put", "patch", "delete"}
CLIENT_TARGET = REPO / "airflow_provider_crm" / "clients" / "pipedrive" / "costs.json"
SANDBOX_TARGET = REPO / "crm_sandbox" / "pipedrive_costs.json"


def read_costs() -> dict[str, list[tuple[str, str, int]]]:
    out: dict[str, list[tuple[str, str, int]]] = {}
    for version in ("v1", "v2"):
        spec = yaml.safe_load((SPECS / f"pipedrive-{version}-openapi.yaml").read_text())
        rows = []
        for path, item in spec["paths"].items():
            for method, op in item.items():
                if method in METHODS and isinstance(op, dict) and "x-token-cost" in op:
                    rows.append((method.upper(), path, int(op["x-token-cost"])))
        out[version] = sorted(rows)
    return out


def main() -> None:
    costs = read_costs()
    count = sum(len(v) for v in costs.values())
    CLIENT_TARGET.write_text(json.dumps(costs, indent=0) + "\n")
    print(f"wrote {CLIENT_TARGET} ({count} operations)")
    sandbox = {version: {f"{m} {p}": c for m, p, c in rows} for version, rows in costs.items()}
    SANDBOX_TARGET.write_text(json.dumps(sandbox, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SANDBOX_TARGET} ({count} operations)")


if __name__ == "__main__":
    main()
