"""docs/parameters.md is the operators' and sensors' signatures, and every parameter is explained."""

from __future__ import annotations

import importlib.util
import re

from tests.e2e.conftest import REPO


def _generator():
    spec = importlib.util.spec_from_file_location("gen_parameter_docs", REPO / "scripts" / "gen_parameter_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_tables_match_the_signatures():
    generated = _generator().render()
    assert (REPO / "docs" / "parameters.md").read_text() == generated, \
        "docs/parameters.md is stale: run python scripts/gen_parameter_docs.py"


def test_every_parameter_of_every_operator_and_sensor_is_explained():
    generated = _generator().render()
    rows = [line for line in generated.splitlines() if line.startswith("| `")]
    assert len(rows) > 80
    unexplained = [row.split("|")[1].strip() for row in rows if re.search(r"\|\s*\|$", row)]
    assert not unexplained, f"parameters without a :param: line: {unexplained}"
    for name in ("fieldnames", "full", "fmt", "title_column", "phase_id", "key_field", "start", "settle_seconds"):
        assert f"| `{name}` |" in generated, name
