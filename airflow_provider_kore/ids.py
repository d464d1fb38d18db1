"""Ids, campaign types and contact list texts, checked before any request; light on purpose: the
operators and the sensor import it at DAG-parse time to refuse a bad id early."""

from __future__ import annotations

import re

from airflow_provider_kore.exceptions import KoreConfigurationError

DEFAULT_CONN_ID = "kore_default"
CAMPAIGN_TYPES = ("sms", "voice")
MAX_ID_LENGTH = 128
#: Kore.ai's documented limits for a contact list (createContactList).
MAX_LIST_NAME_LENGTH = 48
MAX_LIST_DESCRIPTION_LENGTH = 256
_BAD_ID_CHARS = re.compile(r"[/?#%\\\s\x00-\x1f\x7f]")


def validate_id(name: str, value: object) -> str:
    """Return ``value`` if it is usable as a path segment or header, else raise naming ``name``."""
    if not isinstance(value, str):
        raise KoreConfigurationError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise KoreConfigurationError(f"{name} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise KoreConfigurationError(f"{name} is {len(value)} characters long; at most {MAX_ID_LENGTH}")
    if bad := _BAD_ID_CHARS.search(value):
        raise KoreConfigurationError(
            f"{name} {value!r} contains {bad.group()!r}; ids may not contain / ? # % \\, "
            "whitespace or control characters"
        )
    if ".." in value:
        raise KoreConfigurationError(f"{name} {value!r} must not contain '..'")
    return value


def validate_campaign_type(value: object) -> str:
    """``"sms"`` or ``"voice"`` (case-insensitive), returned lower-case."""
    if isinstance(value, str) and value.strip().lower() in CAMPAIGN_TYPES:
        return value.strip().lower()
    raise KoreConfigurationError(f"campaign_type must be one of {', '.join(CAMPAIGN_TYPES)}; got {value!r}")


def validate_campaign_name(value: object) -> str:
    """A campaign's exact name, as a task looks it up: any non-blank string."""
    return validate_text("campaign_name", value)


def validate_text(name: str, value: object, limit: int | None = None) -> str:
    """A non-blank string, of at most ``limit`` characters if given (a contact list's name or description)."""
    if not isinstance(value, str) or not value.strip():
        raise KoreConfigurationError(f"{name} must be a non-empty string; got {value!r}")
    if limit is not None and len(value) > limit:
        raise KoreConfigurationError(f"{name} is {len(value)} characters long; Kore.ai allows at most {limit}")
    return value


def validate_batch_size(value: object) -> int:
    """Contacts per add-contacts request: an integer >= 1 (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KoreConfigurationError(f"batch_size must be an integer >= 1; got {value!r}")
    return value
