"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_crm.clients.pipedrive import policy as pipedrive_policy
from airflow_provider_crm.clients.pipefy import policy as pipefy_policy

# the plan lists are the services' policies' (clients/<service>/policy.py); the sandbox keeps its own
PIPEFY_PLANS = list(pipefy_policy.PLANS)
PIPEDRIVE_PLANS = list(pipedrive_policy.PLANS)


def _field(label: str, description: str, *, type_: str | list[str] = "string", secret: bool = False,
           enum: list[str] | None = None, **schema: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_}
    if isinstance(spec["type"], str) and spec["type"] in ("string", "integer", "number"):
        spec["type"] = [spec["type"], "null"]
    if enum is not None:
        # the choices only: a None among them showed as a literal "null" option in the form's drop-down;
        # the hook's default applies when the field is left unset
        spec["type"] = "string"
        spec["enum"] = list(enum)
    if secret:
        spec["format"] = "password"
    spec.update(schema)
    return {"label": label, "schema": spec, "description": description}


PIPEFY_CONN_FIELDS: dict[str, Any] = {
    "client_id": _field("Service account client id",
                        "OAuth2 client-credentials id of a Pipefy service account. Leave empty to use the token."),
    "client_secret": _field("Service account client secret", "OAuth2 client secret of the service account.",
                            secret=True),
    "oauth_token_url": _field("OAuth token URL", "Default https://app.pipefy.com/oauth/token."),
    "plan": _field("Plan", "Pipefy plan: sets the monthly API-call quota (starter 20, business 500, "
                   "enterprise 10,000, unlimited: none).", enum=PIPEFY_PLANS, default=pipefy_policy.DEFAULT_PLAN),
    "requests_per_30s": _field("Requests per 30 s", "Override of the 500 requests / 30 s limit.",
                               type_="integer"),
    "monthly_quota": _field("Monthly call quota", "Override of the plan's monthly API-call quota.",
                            type_="integer"),
    "rate_limit_store": _field("Rate-limit store", "Where processes share the limit: 'file' (default, one "
                               "machine), 'memory' (one process) or redis://host:6379/0 (many machines)."),
    "web_url": _field("Web app URL", "Base URL of Pipefy's web app for the card and pipe links; default "
                      "derived from the API URL (https://app.pipefy.com)."),
    "date_format": _field("Date format", "How date fields are written: dd/mm/yyyy (default: the form a real "
                          "client is seen writing) or yyyy-mm-dd. To check it on your pipe, write one card and "
                          "read its date_value back (docs/pipefy.md).", enum=["dd/mm/yyyy", "yyyy-mm-dd"],
                          default="dd/mm/yyyy"),
    "page_size": _field("Page size", "Cards or records asked for per page (default 50, Pipefy's documented "
                        "size); a page served shorter is followed all the same.", type_="integer"),
}

PIPEDRIVE_CONN_FIELDS: dict[str, Any] = {
    "client_id": _field("OAuth client id", "Pipedrive app client id (OAuth). Leave empty to use the API token."),
    "client_secret": _field("OAuth client secret", "Pipedrive app client secret.", secret=True),
    "refresh_token": _field("OAuth refresh token", "Refresh token; the access token is refreshed automatically.",
                            secret=True),
    "oauth_token_url": _field("OAuth token URL", "Default https://oauth.pipedrive.com/oauth/token."),
    "company_domain": _field("Company domain", "Your company's subdomain, e.g. 'acme' for acme.pipedrive.com."),
    "plan": _field("Plan", "Pipedrive plan: sets the burst limit and daily token budget.", enum=PIPEDRIVE_PLANS,
                   default=pipedrive_policy.DEFAULT_PLAN),
    "seats": _field("Seats", "Number of paid seats (daily token budget = 30,000 x plan multiplier x seats).",
                    type_="integer"),
    "requests_per_2s": _field("Requests per 2 s", "Override of the plan's burst limit.", type_="integer"),
    "daily_token_budget": _field("Daily token budget", "Override of the company's daily token budget.",
                                 type_="integer"),
    "rate_limit_store": _field("Rate-limit store", "Where processes share the limit: 'file' (default, one "
                               "machine), 'memory' (one process) or redis://host:6379/0 (many machines)."),
}

PIPEFY_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "API URL", "password": "Token (personal access or service account)"},
    "placeholders": {
        "host": "https://api.pipefy.com/graphql",
        "password": "Personal access token; leave empty when a client id and secret are set",
        "client_id": "optional: service account client id",
        "oauth_token_url": "https://app.pipefy.com/oauth/token",
        "plan": "enterprise",
        "rate_limit_store": "file",
        "web_url": "https://app.pipefy.com",
    },
}

PIPEDRIVE_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "Base URL", "password": "API token"},
    "placeholders": {
        "host": "https://api.pipedrive.com (or set the company domain)",
        "password": "API token; leave empty when using OAuth",
        "company_domain": "acme",
        "oauth_token_url": "https://oauth.pipedrive.com/oauth/token",
        "plan": "growth",
        "seats": "1",
        "rate_limit_store": "file",
    },
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-crm",
        "name": "CRM (Pipefy, Pipedrive)",
        "description": "Hooks, operators and sensors for the Pipefy and Pipedrive CRMs, with shared rate limiting.",
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": "Pipefy",
                "external-doc-url": "https://developers.pipefy.com/",
                "tags": ["service"],
            },
            {
                "integration-name": "Pipedrive",
                "external-doc-url": "https://developers.pipedrive.com/docs/api/v1",
                "tags": ["service"],
            },
        ],
        "hooks": [
            {"integration-name": "Pipefy", "python-modules": ["airflow_provider_crm.hooks.pipefy"]},
            {"integration-name": "Pipedrive", "python-modules": ["airflow_provider_crm.hooks.pipedrive"]},
        ],
        "operators": [
            {"integration-name": "Pipefy", "python-modules": ["airflow_provider_crm.operators.pipefy"]},
            {"integration-name": "Pipedrive", "python-modules": ["airflow_provider_crm.operators.pipedrive"]},
        ],
        "sensors": [
            {"integration-name": "Pipefy", "python-modules": ["airflow_provider_crm.sensors.pipefy"]},
            {"integration-name": "Pipedrive", "python-modules": ["airflow_provider_crm.sensors.pipedrive"]},
        ],
        "triggers": [
            {"integration-name": "Pipefy", "python-modules": ["airflow_provider_crm.triggers.pipefy"]},
            {"integration-name": "Pipedrive", "python-modules": ["airflow_provider_crm.triggers.pipedrive"]},
        ],
        "extra-links": [
            "airflow_provider_crm.links.PipefyCardLink",
            "airflow_provider_crm.links.PipefyPipeLink",
            "airflow_provider_crm.links.PipefyTableLink",
            "airflow_provider_crm.links.PipedriveRecordLink",
            "airflow_provider_crm.links.PipedriveListLink",
        ],
        "connection-types": [
            {
                "connection-type": "pipefy",
                "hook-class-name": "airflow_provider_crm.hooks.pipefy.PipefyHook",
                "hook-name": "Pipefy",
                "conn-fields": PIPEFY_CONN_FIELDS,
                "ui-field-behaviour": PIPEFY_UI_FIELD_BEHAVIOUR,
            },
            {
                "connection-type": "pipedrive",
                "hook-class-name": "airflow_provider_crm.hooks.pipedrive.PipedriveHook",
                "hook-name": "Pipedrive",
                "conn-fields": PIPEDRIVE_CONN_FIELDS,
                "ui-field-behaviour": PIPEDRIVE_UI_FIELD_BEHAVIOUR,
            },
        ],
        "config": {
            "crm": {
                "description": "Settings of the CRM provider (Pipefy, Pipedrive).",
                "options": {
                    "rate_limit_store": {
                        "description": "Default store for shared rate limits when a connection names none: "
                        "'file' (SQLite file on this machine), 'memory' (this process only) or a "
                        "redis:// URL (shared by every machine).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "redis://localhost:6379/0",
                        "default": "file",
                    },
                    "rate_limit_dir": {
                        "description": "Directory of the file store. Default: a crm-ratelimit folder in the "
                        "system temporary directory.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/lib/airflow/crm-ratelimit",
                        "default": "",
                    },
                    "max_rate_limit_wait": {
                        "description": "Longest wait (seconds) a task sits out in-process before it raises a "
                        "retryable error and lets Airflow's task retry take over.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "120",
                        "default": "120",
                    },
                    "upsert_claim_seconds": {
                        "description": "How long a per-key create claim lives in a Redis store (a killed "
                        "worker's claims lapse after it) and half of how long a writer waits for another's "
                        "claim. File-store claims are OS locks, released when their process ends.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "120",
                        "default": "120",
                    },
                },
            }
        },
    }
