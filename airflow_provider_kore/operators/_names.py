"""A campaign given by id or by name: the choice checked at DAG-parse time, the name looked up at run time.

Shared by the start / stop / export operators and the status sensor. Only cheap modules are
imported here; the hook is the caller's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids
from airflow_provider_kore.exceptions import KoreConfigurationError

if TYPE_CHECKING:
    from airflow_provider_kore.hooks.kore import KoreHook


def is_template(value: object) -> bool:
    """True for a value only known at run time (Jinja text, an ``XComArg``)."""
    # Lives with the sensor today (which imports this module): imported when called, not at import.
    from airflow_provider_kore.sensors.campaign import is_template as check

    return check(value)


def check_campaign_choice(campaign_id: object, campaign_name: object, campaign_type: object) -> None:
    """Exactly one of ``campaign_id`` / ``campaign_name`` (with a ``campaign_type``); each checked unless templated."""
    if (campaign_id is None) == (campaign_name is None):
        raise KoreConfigurationError("pass exactly one of campaign_id= or campaign_name=")
    if campaign_id is not None:
        if not is_template(campaign_id):
            ids.validate_id("campaign_id", campaign_id)
        return
    if campaign_type is None:
        raise KoreConfigurationError("campaign_name= needs campaign_type= ('sms' or 'voice')")
    ids.validate_campaign_type(campaign_type)
    if not is_template(campaign_name) and (not isinstance(campaign_name, str) or not campaign_name.strip()):
        raise KoreConfigurationError(f"campaign_name must be a non-empty string; got {campaign_name!r}")


def campaign_id_for(
    hook: KoreHook,
    campaign_id: object,
    campaign_name: object,
    campaign_type: str | None,
    stream_id: str | None,
    log: Any,
) -> str:
    """The (rendered) id, or the id of the one campaign with the (rendered) name."""
    if campaign_id is not None:
        return ids.validate_id("campaign_id", campaign_id)
    if not isinstance(campaign_name, str) or not campaign_name.strip():
        raise KoreConfigurationError(f"campaign_name must be a non-empty string; got {campaign_name!r}")
    found = hook.find_campaign(campaign_name, ids.validate_campaign_type(campaign_type), stream_id=stream_id)
    log.info("Kore.ai %s campaign %r is %s", campaign_type, campaign_name, found)
    return found


__all__ = ["campaign_id_for", "check_campaign_choice"]
