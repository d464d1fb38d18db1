"""The Kore.ai campaign API itself, shared by the sync hook and the async client. No I/O.

* :data:`ENDPOINTS` - the one table of documented operations (method, path, query). Nothing
  else in the provider builds a URL.
* :func:`prepare` - validated input -> the exact request (method, URL, headers, body).
* :func:`parse_answer` - (HTTP status, body) -> the JSON object, or the one matching exception.

What to do with each answer (retry, re-sign, pause, give up) is decided in
:mod:`airflow_provider_kore.engine`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreBadResponseError,
    KoreConfigurationError,
    KoreNotFoundError,
    KoreRateLimitError,
    KoreServerError,
    Secrets,
)
from airflow_provider_kore.ids import CAMPAIGN_TYPES, validate_campaign_type, validate_id


@dataclass(frozen=True)
class Endpoint:
    """One documented operation. ``{name}`` in the path or query is filled by :func:`prepare`."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    #: What the user reads in messages: "get campaign status", "start campaign", ...
    label: str
    #: Safe to send twice. A start, a new list or added contacts are not: a lost answer is not re-sent.
    idempotent: bool = True
    #: The answer must carry a ``data`` object.
    returns_data: bool = False


_CAMPAIGN = "/campaign/api/v2/public/{stream_id}/campaign"
_ACCOUNT = ("accountId", "{account_id}")

# Kore.ai's pages, to the letter. Where they disagree each is followed as written: the stop
# page's path has no leading /campaign; the start page has no accountId query; contact outcomes
# use the status path with view=contacts and no accountId; add contacts is an api/1.1 path
# with the application id (iid) in it.
ENDPOINTS: dict[str, Endpoint] = {
    "get_campaign_status": Endpoint(
        "POST", _CAMPAIGN + "/{campaign_id}/status", (_ACCOUNT, ("view", "status")), "get campaign status", True, True
    ),
    "get_campaign": Endpoint("GET", _CAMPAIGN + "/{campaign_id}", (_ACCOUNT,), "get campaign", True, True),
    "start_campaign": Endpoint(
        "POST",
        _CAMPAIGN + "/{campaign_id}",
        (("campaignType", "{campaign_type}"), ("trigger", "play")),
        "start campaign",
        idempotent=False,
    ),
    "stop_campaign": Endpoint(
        "POST",
        "/api/v2/public/{stream_id}/campaign/trigger/{campaign_id}",
        (_ACCOUNT, ("campaignType", "{campaign_type}"), ("trigger", "stop")),
        "stop campaign",
    ),
    "list_campaigns": Endpoint("POST", _CAMPAIGN + "/getAllCampaignDetails", (_ACCOUNT,), "list campaigns", True, True),
    "get_campaign_contacts": Endpoint(
        "POST", _CAMPAIGN + "/{campaign_id}/status", (("view", "contacts"),), "get campaign contacts", True, True
    ),
    "create_contact_list": Endpoint(
        "POST",
        _CAMPAIGN + "/contactList/createContactList",
        (_ACCOUNT,),
        "create contact list",
        idempotent=False,
        returns_data=True,
    ),
    "add_contacts": Endpoint(
        "POST", "/api/1.1/public/{iid}/campaign/contactList/addContacts", (), "add contacts", idempotent=False
    ),
}

# ---------------------------------------------------------------------------------------------
# Requests.


@dataclass(frozen=True)
class PreparedCall:
    """One request, ready to send (the ``auth`` header is added by the driver at send time)."""

    operation: str
    endpoint: Endpoint
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    #: What the call is about, for messages: "campaign 'cd-1'", "contact list 'x'".
    subject: str
    campaign_id: str | None
    stream_id: str
    #: Where the stream id came from: "the task" or "connection 'kore_default'".
    stream_source: str
    base_url: str
    conn_id: str

    @property
    def where(self) -> str:
        return f"Kore.ai {self.endpoint.label}" + (f" for {self.subject}" if self.subject else "")


def prepare(
    config: KoreConnectionConfig,
    operation: str,
    *,
    stream_id: str | None = None,
    body: Mapping[str, Any] | None = None,
    subject: str = "",
    **params: object,
) -> PreparedCall:
    """Validate the input and build the documented request for ``operation``.

    ``params`` fill the endpoint's ``{campaign_id}`` and ``{campaign_type}``; ``body`` is sent
    as JSON (POSTs without one send ``{}``).
    """
    endpoint = ENDPOINTS[operation]
    stream, source = config.resolve_stream_id(stream_id)
    iid = config.iid or stream
    values = {"stream_id": quote(stream, safe=""), "account_id": config.account_id, "iid": quote(iid, safe="")}
    template = endpoint.path + str(endpoint.query)
    campaign = None
    if "{campaign_id}" in template:
        campaign = validate_id("campaign_id", params.get("campaign_id"))
        values["campaign_id"] = quote(campaign, safe="")
        subject = subject or f"campaign {campaign!r}"
    if "{campaign_type}" in template:
        if params.get("campaign_type") is None:
            raise KoreConfigurationError(f"{endpoint.label} needs a campaign_type ({', '.join(CAMPAIGN_TYPES)})")
        values["campaign_type"] = validate_campaign_type(params["campaign_type"])
    path = endpoint.path.format(**values)
    query = urlencode([(key, value.format(**values)) for key, value in endpoint.query])
    headers = {"iid": iid, "accountId": config.account_id, "Accept": "application/json"}
    data = None
    if endpoint.method == "POST":
        headers["Content-Type"] = "application/json"
        data = json.dumps(dict(body or {}), separators=(",", ":")).encode()
    return PreparedCall(
        operation=operation,
        endpoint=endpoint,
        method=endpoint.method,
        url=f"{config.base_url}{path}" + (f"?{query}" if query else ""),
        headers=headers,
        body=data,
        subject=subject,
        campaign_id=campaign,
        stream_id=stream,
        stream_source=source,
        base_url=config.base_url,
        conn_id=config.conn_id,
    )


# ---------------------------------------------------------------------------------------------
# Answers -> data or exception. The one place an HTTP answer becomes an exception.


def kore_error_text(payload: Any) -> str | None:
    """Kore's own error text: ``errors[].msg``, else ``message`` / ``error``."""
    if not isinstance(payload, Mapping):
        return None
    errors = payload.get("errors")
    if isinstance(errors, list):
        texts = [str(e.get("msg") or e.get("message") or "") for e in errors if isinstance(e, Mapping)]
        if any(texts):
            return "; ".join(t for t in texts if t)
    for key in ("message", "msg", "error"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, Mapping):
            return kore_error_text(value)
    return None


_STATUS_CLASSES: dict[int, type[KoreApiError]] = {
    401: KoreAuthError,
    403: KoreAuthError,
    404: KoreNotFoundError,
    429: KoreRateLimitError,
}


def _hint(call: PreparedCall, status: int) -> str:
    if status in (401, 403):
        return (
            f" (check the Client ID / Client Secret, i.e. login / password, of kore connection {call.conn_id!r}, "
            "and that the JWT app has the Campaign Management scope)"
        )
    if status == 404:
        return f" (stream id {call.stream_id!r} from {call.stream_source})"
    return ""


def parse_answer(call: PreparedCall, status_code: int, body: bytes | str, *, secrets: Secrets | None = None) -> Any:
    """Return the JSON object of a good answer; raise the matching :class:`KoreApiError` otherwise.

    ``secrets`` are removed from every message (JWTs always are).
    """
    scrub = (secrets or Secrets()).redact
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        payload: Any = json.loads(text) if text.strip() else None
        parsed = True
    except ValueError:
        payload, parsed = None, False
    where = call.where

    def bad(shape: str) -> KoreBadResponseError:
        return KoreBadResponseError(
            scrub(f"{where}: HTTP {status_code} with {shape}"),
            operation=call.operation,
            campaign_id=call.campaign_id,
            status_code=status_code,
        )

    if not 200 <= status_code < 300:
        kore_msg = kore_error_text(payload) if parsed else None
        detail = kore_msg or (_snippet(text) if text.strip() else "no error text")
        cls = _STATUS_CLASSES.get(status_code) or (KoreServerError if status_code >= 500 else KoreApiError)
        raise cls(
            f"{where} failed: HTTP {status_code}: {scrub(detail)}{_hint(call, status_code)}",
            operation=call.operation,
            campaign_id=call.campaign_id,
            status_code=status_code,
            kore_message=scrub(kore_msg) if kore_msg else None,
        )
    if not parsed or not isinstance(payload, dict):
        if not text.strip():
            raise bad("an empty body; expected a JSON object")
        if parsed:
            raise bad(f"JSON that is not an object ({type(payload).__name__})")
        raise bad(f"non-JSON text {_snippet(text)}")
    if str(payload.get("status", "")).lower() == "failure":
        kore_msg = scrub(kore_error_text(payload) or "no error text")
        raise KoreApiError(
            f"{where} failed: Kore answered status 'failure': {kore_msg}",
            operation=call.operation,
            campaign_id=call.campaign_id,
            status_code=status_code,
            kore_message=kore_msg,
        )
    if call.endpoint.returns_data:
        data = payload.get("data")
        if not isinstance(data, dict):
            raise bad("no 'data' object")
        if call.operation == "get_campaign_status" and not isinstance(data.get("status"), str):
            raise bad("no data.status")
    return payload


# ---------------------------------------------------------------------------------------------
# Pipelines: Kore.ai's documented shapes, checked before any request is sent.

#: The contact fields a contact list maps (createContactList's ``mapping``).
CONTACT_FIELDS = ("phoneNumber", "firstName", "lastName", "timeZone", "uniqueId", "contactPriority")
#: The statuses getAllCampaignDetails filters on, as Kore spells them.
LIST_STATUSES = ("Active", "Completed", "Ready", "Paused", "Preparing", "Stopped", "Scheduled", "Rescheduled")
_PHONE = re.compile(r"\+?[0-9]{5,15}")
_PHONE_SEPARATORS = re.compile(r"[\s().-]")


def campaign_statuses(statuses: object) -> list[str] | None:
    """Kore's spelling of each status (matched case-insensitively); None for no filter."""
    if statuses is None:
        return None
    known = {status.lower(): status for status in LIST_STATUSES}
    items = [statuses] if isinstance(statuses, str) else statuses
    names = [known.get(str(item).strip().lower()) for item in items] if isinstance(items, (list, tuple, set)) else []
    if not names or None in names:
        raise KoreConfigurationError(f"statuses must be among {', '.join(LIST_STATUSES)}; got {statuses!r}")
    return [name for name in names if name]


def contact_payload(contact: object) -> dict[str, Any]:
    """One contact for addContacts: ``phoneNumber`` (5-15 digits, optional +) and the mapped fields.

    Separators (spaces, dots, dashes, brackets) are dropped from the number; blank fields are left out.
    """
    if not isinstance(contact, Mapping):
        raise KoreConfigurationError(f"a contact must be a mapping of fields; got {type(contact).__name__}")
    unknown = sorted(str(key) for key in contact if key not in CONTACT_FIELDS)
    if unknown:
        raise KoreConfigurationError(f"unknown contact fields {unknown}; Kore.ai maps {', '.join(CONTACT_FIELDS)}")
    payload: dict[str, Any] = {}
    for key, value in contact.items():
        value = value.strip() if isinstance(value, str) else value
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise KoreConfigurationError(f"contact field {key} must be text or a number; got {value!r}")
        payload[key] = value
    phone = _PHONE_SEPARATORS.sub("", str(payload.get("phoneNumber", "")))
    if not _PHONE.fullmatch(phone):
        raise KoreConfigurationError(
            f"no usable phoneNumber ({contact.get('phoneNumber')!r}): 5 to 15 digits, optionally after a +"
        )
    payload["phoneNumber"] = phone
    return payload


def _snippet(text: str) -> str:
    return repr(" ".join(text.split())[:120])
