"""Write docs/parameters.md: one table per operator and sensor, from the code itself.

Each row is a parameter of the class's ``__init__`` (its own and those of the provider's base classes
it passes on), with its default and the ``:param:`` text of the docstring. A test regenerates the page
and compares, so the docs cannot drift from the signatures.

Usage: python scripts/gen_parameter_docs.py [--check]
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "parameters.md"
MODULES = ["airflow_provider_crm.operators.pipefy", "airflow_provider_crm.operators.pipedrive",
           "airflow_provider_crm.sensors.pipefy", "airflow_provider_crm.sensors.pipedrive"]
PARAM = re.compile(r":param (\w+):\s*(.*?)(?=\n\s*:param |\n\s*:\w+|\Z)", re.S)


def _public_classes(module_name: str) -> list[type]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    classes = [getattr(module, n) for n in names]
    return [c for c in classes if inspect.isclass(c) and c.__module__ == module_name and not c.__name__.startswith("_")]


def _docs(cls: type) -> dict[str, str]:
    texts: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # the class's own text wins over its bases'
        if klass.__module__.startswith("airflow_provider_crm"):
            for name, text in PARAM.findall(inspect.getdoc(klass) or ""):
                texts[name] = " ".join(text.split())
    return texts


def _parameters(cls: type) -> list[inspect.Parameter]:
    seen: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:  # the provider's own base classes (connection ids), not Airflow's
        if not klass.__module__.startswith("airflow_provider_crm") or "__init__" not in vars(klass):
            continue
        for param in inspect.signature(vars(klass)["__init__"]).parameters.values():
            if param.name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                seen.setdefault(param.name, param)
    return list(seen.values())


def _default(param: inspect.Parameter) -> str:
    if param.default is inspect.Parameter.empty:
        return "required"
    return f"`{param.default!r}`"


def render() -> str:
    lines = ["# Operator and sensor parameters", "",
             "Generated from the code by `scripts/gen_parameter_docs.py` (a test checks it is current). Every",
             "operator and sensor also takes Airflow's own arguments (`task_id`, `retries`, `outlets`, ...).",
             "Templated: the parameters Airflow renders with Jinja before the task runs.", ""]
    for module_name in MODULES:
        for cls in _public_classes(module_name):
            templated = set(getattr(cls, "template_fields", ()))
            lines += [f"## `{cls.__name__}`", "", f"`{module_name}.{cls.__name__}`", "",
                      "| parameter | default | templated | meaning |", "|---|---|---|---|"]
            texts = _docs(cls)
            for param in _parameters(cls):
                meaning = texts.get(param.name, "").replace("|", "\\|")
                lines.append(f"| `{param.name}` | {_default(param)} | {'yes' if param.name in templated else ''} "
                             f"| {meaning} |")
            lines.append("")
    return "\n".join(lines)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        return 0 if TARGET.exists() and TARGET.read_text() == text else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
