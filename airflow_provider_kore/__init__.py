"""Apache Airflow provider for Kore.ai contact-center campaigns. Importing it is free: Airflow reads
:func:`get_provider_info` (entry point ``apache_airflow_provider``); 3.2+ builds the ``kore``
connection form from its ``conn-fields`` without importing the hook."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

__version__ = "0.1.0"


# The ``kore`` connection's extras: label, JSON type (each also takes null), the rest of the schema and
# the form's placeholder. No null in the enum: Airflow 3.0's form crashes on one ("No value found for item").
_FIELDS: dict[str, tuple[str, str, dict[str, Any], str | None]] = {
    "account_id": ("Account ID", "string", {}, "67777ce93e25326494e..."),
    "stream_id": ("Stream / Bot ID", "string", {}, "st-0603182c-7ffb-53c3-..."),
    "iid": ("Application ID (iid)", "string", {}, "defaults to the stream id"),
    "timeout": ("Request timeout (seconds)", "number", {"minimum": 0, "default": 30}, "30"),
    "max_retries": ("Max retries", "integer", {"minimum": 0, "default": 5}, "5"),
    "jwt_algorithm": ("JWT algorithm", "string", {"enum": ["HS256", "HS512"], "default": "HS256"}, "HS256"),
    "jwt_per_request": ("New JWT per request", "boolean", {"default": False}, None),
    "verify": ("Verify TLS certificates", "boolean", {"default": True}, None),
    "max_requests_per_minute": ("Max requests per minute", "integer", {"minimum": 1}, None),
    "max_requests_per_hour": ("Max requests per hour", "integer", {"minimum": 1}, None),
}
_HELP = {  # the fields' descriptions
    "account_id": "Your Kore.ai account id (sent as the accountId header and query). Required.",
    "stream_id": "Default bot (stream) id, e.g. st-0603182c-...; any task can override it.",
    "iid": "The iid header. Leave empty to send the stream id, as Kore's samples do.",
    "timeout": "Seconds to wait for each request. Default 30.",
    "max_retries": "Retries on 5xx and network errors, with backoff that honours Retry-After. Default 5. "
    "A 429 never spends one: it pauses the connection.",
    "jwt_algorithm": "Algorithm that signs the auth token with the client secret: HS256 (default) or HS512.",
    "jwt_per_request": "Sign a fresh token (new jti) for every request, for JWT apps that enforce single-use JTIs.",
    "verify": "Check the platform's TLS certificate. Default true.",
    "max_requests_per_minute": "Request budget per rolling 60 s for this connection in one process "
    "(Kore.ai allows about 600 for runtime APIs, 60 for design-time APIs). Empty: adaptive only.",
    "max_requests_per_hour": "Request budget per rolling hour for this connection in one process "
    "(Kore.ai allows about 18,000 for runtime APIs, 1,800 for design-time APIs). Empty: adaptive only.",
}


def _conn_fields() -> dict[str, Any]:
    return {  # the schemas copied: a caller may change what it gets
        name: {"label": label, "description": _HELP[name], "schema": {"type": [kind, "null"], **deepcopy(schema)}}
        for name, (label, kind, schema, _) in _FIELDS.items()
    }


def _modules(*names: str) -> list[dict[str, Any]]:
    return [{"integration-name": "Kore.ai", "python-modules": [f"airflow_provider_kore.{n}" for n in names]}]


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's ``ProvidersManager``."""
    return {
        "package-name": "airflow-provider-kore",
        "name": "Kore.ai",
        "description": "Start, wait on and stop Kore.ai contact-center campaigns, load their contacts and export "
        "their outcomes from Airflow DAGs.",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "Kore.ai", "external-doc-url": "https://docs.kore.ai/", "tags": ["service"]}
        ],
        "hooks": _modules("hooks.kore"),
        "operators": _modules("operators.campaign", "operators.contacts", "operators.results"),
        "sensors": _modules("sensors.campaign"),
        "triggers": _modules("triggers.campaign"),
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_kore.hooks.kore.KoreHook",
                "hook-name": "Kore.ai",
                "connection-type": "kore",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Platform URL", "login": "Client ID", "password": "Client Secret"},
                    "placeholders": {
                        "host": "https://platform.kore.ai",
                        "login": "cs-5250bdc9-...",
                        "password": "your JWT app's client secret",
                        **{name: field[3] for name, field in _FIELDS.items() if field[3]},
                    },
                },
                "conn-fields": _conn_fields(),
            }
        ],
    }


def connection_form_widgets() -> dict[str, Any]:
    """The ``conn-fields`` as wtforms fields for Airflow 3.0 / 3.1 (their API server turns them into the
    React form's JSON schema; flask_appbuilder widgets and flask_babel labels are ignored)."""
    from wtforms import BooleanField, IntegerField, StringField
    from wtforms.validators import any_of

    classes: dict[str, Any] = {"boolean": BooleanField, "integer": IntegerField}
    widgets: dict[str, Any] = {}
    for name, (label, kind, schema, _) in _FIELDS.items():
        validators = [any_of(list(schema["enum"]))] if "enum" in schema else []
        widgets[name] = classes.get(kind, StringField)(label, validators=validators, description=_HELP[name])
    return widgets


def ui_field_behaviour() -> dict[str, Any]:
    """The ``ui-field-behaviour`` in the shape Airflow 3.0 / 3.1 ask the hook for."""
    behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    return {key.replace("-", "_"): behaviour[key] for key in ("hidden-fields", "relabeling", "placeholders")}
