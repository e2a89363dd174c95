"""Regenerate airflow_provider_crm/common/pipedrive_costs.json from Pipedrive's OpenAPI specs.

Usage: python scripts/gen_pipedrive_costs.py [path/to/api-specs]
Each operation's ``x-token-cost`` is its charge against the company's daily token budget.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SPECS = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "api-specs"
METHODS = {"get", "post", "put", "patch", "delete"}


def main() -> None:
    out: dict[str, list[tuple[str, str, int]]] = {}
    for version in ("v1", "v2"):
        spec = yaml.safe_load((SPECS / f"pipedrive-{version}-openapi.yaml").read_text())
        rows = []
        for path, item in spec["paths"].items():
            for method, op in item.items():
                if method in METHODS and isinstance(op, dict) and "x-token-cost" in op:
                    rows.append((method.upper(), path, int(op["x-token-cost"])))
        out[version] = sorted(rows)
    target = REPO / "airflow_provider_crm" / "common" / "pipedrive_costs.json"
    target.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {target} ({sum(len(v) for v in out.values())} operations)")


if __name__ == "__main__":
    main()
