"""The connection form, declared once in ``get_provider_info`` and mirrored for Airflow 3.0 / 3.1.

Airflow 3.2+ reads ``conn-fields`` and ``ui-field-behaviour`` from provider info; older 3.x versions
call the hook's ``get_connection_form_widgets`` / ``get_ui_field_behaviour``. Both are built from the
same dicts here so the two forms never drift apart.
"""

from __future__ import annotations

from typing import Any


def form_widgets(conn_fields: dict[str, Any]) -> dict[str, Any]:
    """wtforms widgets for Airflow 3.0 / 3.1, built from a ``conn-fields`` dict."""
    from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import IntegerField, PasswordField, StringField
    from wtforms.validators import Optional

    widgets: dict[str, Any] = {}
    for name, spec in conn_fields.items():
        schema = spec["schema"]
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        label = lazy_gettext(spec["label"])
        if schema.get("format") == "password":
            field = PasswordField(label, widget=BS3PasswordFieldWidget(), description=spec["description"])
        elif "integer" in types:
            field = IntegerField(label, widget=BS3TextFieldWidget(), validators=[Optional()],
                                 description=spec["description"])
        else:
            field = StringField(label, widget=BS3TextFieldWidget(), description=spec["description"])
        widgets[name] = field
    return widgets


def field_behaviour(ui_field_behaviour: dict[str, Any]) -> dict[str, Any]:
    """``get_ui_field_behaviour`` answer (snake_case keys) from a ``ui-field-behaviour`` dict."""
    return {
        "hidden_fields": list(ui_field_behaviour.get("hidden-fields", [])),
        "relabeling": dict(ui_field_behaviour.get("relabeling", {})),
        "placeholders": dict(ui_field_behaviour.get("placeholders", {})),
    }


def extra_value(extras: dict[str, Any], conn_type: str, name: str) -> Any:
    """An extra by its plain name, or by the ``extra__<type>__<name>`` form older forms saved."""
    value = extras.get(name)
    if value in (None, ""):
        value = extras.get(f"extra__{conn_type}__{name}")
    return None if value == "" else value
