"""Apache Airflow provider for Kore.ai contact-center campaigns.

Importing this package is free: it holds only :func:`get_provider_info`, which Airflow reads
through the ``apache_airflow_provider`` entry point to list the provider, its classes and the
``kore`` connection form (Airflow 3.2+ builds the form from ``conn-fields`` without importing
the hook).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PACKAGE = "airflow_provider_kore"


def _conn_fields() -> dict[str, Any]:
    number = {"type": ["integer", "null"]}
    return {
        "account_id": {
            "label": "Account ID",
            "description": "Your Kore.ai account id (sent as the accountId header and query). Required.",
            "schema": {"type": ["string", "null"]},
        },
        "stream_id": {
            "label": "Stream / Bot ID",
            "description": "Default bot (stream) id, e.g. st-0603182c-...; any task can override it.",
            "schema": {"type": ["string", "null"]},
        },
        "iid": {
            "label": "Application ID (iid)",
            "description": "The iid header. Leave empty to send the stream id, as Kore's samples do.",
            "schema": {"type": ["string", "null"]},
        },
        "timeout": {
            "label": "Request timeout (seconds)",
            "description": "Seconds to wait for each request. Default 30.",
            "schema": {"type": ["number", "null"], "minimum": 0, "default": 30},
        },
        "max_retries": {
            "label": "Max retries",
            "description": "Retries on 5xx and network errors, with backoff that honours Retry-After. Default 5. "
            "A 429 never spends one: it pauses the connection.",
            "schema": {**number, "minimum": 0, "default": 5},
        },
        "jwt_algorithm": {
            "label": "JWT algorithm",
            "description": "Algorithm that signs the auth token with the client secret: HS256 (default) or HS512.",
            # No null choice: Airflow 3.0's form crashes on one ("No value found for item").
            "schema": {"type": ["string", "null"], "enum": ["HS256", "HS512"], "default": "HS256"},
        },
        "jwt_per_request": {
            "label": "New JWT per request",
            "description": "Sign a fresh token (new jti) for every request, for JWT apps that enforce single-use JTIs.",
            "schema": {"type": ["boolean", "null"], "default": False},
        },
        "verify": {
            "label": "Verify TLS certificates",
            "description": "Check the platform's TLS certificate. Default true.",
            "schema": {"type": ["boolean", "null"], "default": True},
        },
        "max_requests_per_minute": {
            "label": "Max requests per minute",
            "description": "Request budget per rolling 60 s for this connection in one process "
            "(Kore.ai allows about 600 for runtime APIs, 60 for design-time APIs). Empty: adaptive only.",
            "schema": {**number, "minimum": 1},
        },
        "max_requests_per_hour": {
            "label": "Max requests per hour",
            "description": "Request budget per rolling hour for this connection in one process "
            "(Kore.ai allows about 18,000 for runtime APIs, 1,800 for design-time APIs). Empty: adaptive only.",
            "schema": {**number, "minimum": 1},
        },
    }


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's ``ProvidersManager``."""
    return {
        "package-name": "airflow-provider-kore",
        "name": "Kore.ai",
        "description": "Start, wait on and stop Kore.ai contact-center campaigns, load their contacts and export "
        "their outcomes from Airflow DAGs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Kore.ai",
                "external-doc-url": "https://docs.kore.ai/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Kore.ai", "python-modules": [f"{_PACKAGE}.hooks.kore"]}],
        "operators": [
            {
                "integration-name": "Kore.ai",
                "python-modules": [
                    f"{_PACKAGE}.operators.campaign",
                    f"{_PACKAGE}.operators.contacts",
                    f"{_PACKAGE}.operators.results",
                ],
            }
        ],
        "sensors": [{"integration-name": "Kore.ai", "python-modules": [f"{_PACKAGE}.sensors.campaign"]}],
        "triggers": [{"integration-name": "Kore.ai", "python-modules": [f"{_PACKAGE}.triggers.campaign"]}],
        "connection-types": [
            {
                "hook-class-name": f"{_PACKAGE}.hooks.kore.KoreHook",
                "hook-name": "Kore.ai",
                "connection-type": "kore",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Platform URL", "login": "Client ID", "password": "Client Secret"},
                    "placeholders": {
                        "host": "https://platform.kore.ai",
                        "login": "cs-5250bdc9-...",
                        "password": "your JWT app's client secret",
                        "account_id": "67777ce93e25326494e...",
                        "stream_id": "st-0603182c-7ffb-53c3-...",
                        "iid": "defaults to the stream id",
                        "timeout": "30",
                        "max_retries": "5",
                        "jwt_algorithm": "HS256",
                    },
                },
                "conn-fields": _conn_fields(),
            }
        ],
    }


def connection_form_widgets() -> dict[str, Any]:
    """The ``conn-fields`` as wtforms fields, for Airflow 3.0 / 3.1's connection form.

    Only ``wtforms`` is needed: their API server turns these fields into the React form's JSON
    schema; flask_appbuilder widgets and flask_babel labels (Airflow 2's web server) are ignored.
    """
    from wtforms import BooleanField, IntegerField, PasswordField, StringField
    from wtforms.validators import any_of

    widgets: dict[str, Any] = {}
    for name, spec in _conn_fields().items():
        schema = spec["schema"]
        kinds = schema["type"]
        choices = schema.get("enum")
        field_class: Any = StringField
        if "boolean" in kinds:
            field_class = BooleanField
        elif "integer" in kinds:
            field_class = IntegerField
        elif schema.get("format") == "password":
            field_class = PasswordField
        validators = [any_of(choices)] if choices else []
        widgets[name] = field_class(spec["label"], validators=validators, description=spec["description"])
    return widgets


def ui_field_behaviour() -> dict[str, Any]:
    """The ``ui-field-behaviour`` in the shape Airflow 3.0 / 3.1 ask the hook for."""
    behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
    return {key.replace("-", "_"): behaviour[key] for key in ("hidden-fields", "relabeling", "placeholders")}
