"""Run inside a compatibility venv (scripts/compat.py): both connection types are registered with the
form fields the provider declares, as the UI gets them.

The UI's connection form reads ``HookMetaService.hook_meta_data()`` (``GET /ui/connections/hook_meta``)
on every Airflow 3.x; 3.2+ fill it from ``conn-fields`` in provider info, 3.0 and 3.1 from the hook's
``get_connection_form_widgets`` / ``get_ui_field_behaviour``. Either way every declared field must show
up with its type, secrets as password fields. Prints one line per check; exits 1 on any failure.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

from airflow_provider_crm.get_provider_info import get_provider_info

HOOKS = {
    "pipefy": "airflow_provider_crm.hooks.pipefy.PipefyHook",
    "pipedrive": "airflow_provider_crm.hooks.pipedrive.PipedriveHook",
}


def _types(schema: dict[str, Any]) -> set[str]:
    value = schema.get("type", [])
    return set(value if isinstance(value, list) else [value]) - {"null"}


def main() -> int:
    failures: list[str] = []
    declared = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    meta = {m.connection_type: m for m in HookMetaService.hook_meta_data()}
    for conn_type, hook_class in HOOKS.items():
        entry = meta.get(conn_type)
        if entry is None or entry.hook_class_name != hook_class:
            failures.append(f"{conn_type}: connection type not registered (UI metadata: {entry!r})")
            continue
        fields = declared[conn_type]["conn-fields"]
        shown: dict[str, Any] = dict(entry.extra_fields or {})
        missing = sorted(set(fields) - set(shown))
        if missing:
            failures.append(f"{conn_type}: form fields missing in the UI metadata: {missing}")
        for name, spec in fields.items():
            if name not in shown:
                continue
            want, got = spec["schema"], shown[name].get("schema", {})
            if want.get("format") == "password" and got.get("format") != "password":
                failures.append(f"{conn_type}.{name}: declared a password field, shown as {got}")
            if _types(want) != _types(got):
                failures.append(f"{conn_type}.{name}: type {sorted(_types(got))}, declared {sorted(_types(want))}")
        behaviour = declared[conn_type].get("ui-field-behaviour", {})
        standard = entry.standard_fields
        for field, label in behaviour.get("relabeling", {}).items():
            ui = getattr(standard, "url_schema" if field == "schema" else field, None) if standard else None
            if ui is None or ui.title != label:
                failures.append(f"{conn_type}.{field}: relabel {label!r} not applied (UI: {ui!r})")
        print(f"  {conn_type}: {entry.hook_class_name}, {len(shown)} extra fields shown "
              f"({len(fields)} declared): {', '.join(sorted(shown))}")
    for line in failures:
        print(f"  problem: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
