"""The Kore.ai campaign API, no I/O: :data:`ENDPOINTS` (nothing else builds a URL), :func:`prepare`
(input -> the exact request) and :func:`parse_answer` (answer -> JSON object or the matching exception)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

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
from airflow_provider_kore.ids import validate_campaign_type, validate_id


@dataclass(frozen=True)
class Endpoint:
    """One documented operation. :func:`prepare` fills (and quotes) each ``{name}`` in ``path`` (and query)."""

    method: str
    path: str
    #: What the user reads in messages: "get campaign status", "start campaign", ...
    label: str
    idempotent: bool
    returns_data: bool


_CAMPAIGN = "/campaign/api/v2/public/{stream_id}/campaign"
# Kore.ai's pages, to the letter. Where they disagree each is followed as written: the stop
# page's path has no leading /campaign; the start page has no accountId query; contact outcomes
# use the status path with view=contacts and no accountId; add contacts is an api/1.1 path
# with the application id (iid) in it.
_PAGES = {
    "get_campaign_status": ("POST", _CAMPAIGN + "/{campaign_id}/status?accountId={account_id}&view=status"),
    "get_campaign": ("GET", _CAMPAIGN + "/{campaign_id}?accountId={account_id}"),
    "start_campaign": ("POST", _CAMPAIGN + "/{campaign_id}?campaignType={campaign_type}&trigger=play"),
    "stop_campaign": (
        "POST",
        "/api/v2/public/{stream_id}/campaign/trigger/{campaign_id}"
        "?accountId={account_id}&campaignType={campaign_type}&trigger=stop",
    ),
    "list_campaigns": ("POST", _CAMPAIGN + "/getAllCampaignDetails?accountId={account_id}"),
    "get_campaign_contacts": ("POST", _CAMPAIGN + "/{campaign_id}/status?view=contacts"),
    "create_contact_list": ("POST", _CAMPAIGN + "/contactList/createContactList?accountId={account_id}"),
    "add_contacts": ("POST", "/api/1.1/public/{iid}/campaign/contactList/addContacts"),
}
#: Not safe to send twice: a lost answer to one of these is never re-sent.
_NOT_IDEMPOTENT = {"start_campaign", "create_contact_list", "add_contacts"}
#: Every other answer must carry a ``data`` object.
_NO_DATA = {"start_campaign", "stop_campaign", "add_contacts"}
ENDPOINTS: dict[str, Endpoint] = {
    name: Endpoint(method, path, name.replace("_", " "), name not in _NOT_IDEMPOTENT, name not in _NO_DATA)
    for name, (method, path) in _PAGES.items()
}


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
    """The documented request for ``operation``: ``params`` fill ``{campaign_id}`` and ``{campaign_type}``,
    ``body`` is sent as JSON (a POST without one sends ``{}``)."""
    endpoint = ENDPOINTS[operation]
    stream, source = config.resolve_stream_id(stream_id)
    iid = config.iid or stream
    values = {"stream_id": stream, "account_id": config.account_id, "iid": iid}
    campaign = None
    if "{campaign_id}" in endpoint.path:
        campaign = values["campaign_id"] = validate_id("campaign_id", params.get("campaign_id"))
        subject = subject or f"campaign {campaign!r}"
    if "{campaign_type}" in endpoint.path:
        values["campaign_type"] = validate_campaign_type(params.get("campaign_type"))
    headers = {"iid": iid, "accountId": config.account_id, "Accept": "application/json"}
    data = None
    if endpoint.method == "POST":
        headers["Content-Type"] = "application/json"
        data = json.dumps(dict(body or {}), separators=(",", ":")).encode()
    return PreparedCall(
        operation=operation,
        endpoint=endpoint,
        method=endpoint.method,
        url=config.base_url + endpoint.path.format(**{key: quote(v, safe="") for key, v in values.items()}),
        headers=headers,
        body=data,
        subject=subject,
        campaign_id=campaign,
        stream_id=stream,
        stream_source=source,
        base_url=config.base_url,
        conn_id=config.conn_id,
    )


def kore_error_text(payload: Any) -> str | None:
    """Kore's own error text: ``errors[].msg``, else ``message`` / ``msg`` / ``error``."""
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


_STATUS_CLASSES = {401: KoreAuthError, 403: KoreAuthError, 404: KoreNotFoundError, 429: KoreRateLimitError}


def _hint(call: PreparedCall, status: int) -> str:
    if status in (401, 403):
        return (
            f" (check the Client ID / Client Secret, i.e. login / password, of kore connection {call.conn_id!r}, "
            "and that the JWT app has the Campaign Management scope)"
        )
    return f" (stream id {call.stream_id!r} from {call.stream_source})" if status == 404 else ""


def parse_answer(call: PreparedCall, status_code: int, body: bytes | str, *, secrets: Secrets | None = None) -> Any:
    """The JSON object of a good answer, else raise the matching :class:`KoreApiError` (secrets, JWTs scrubbed)."""
    scrub = (secrets or Secrets()).redact
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    about: dict[str, Any] = {"operation": call.operation, "campaign_id": call.campaign_id, "status_code": status_code}
    blank = not text.strip()
    shape = "an empty body; expected a JSON object" if blank else ""  # what is wrong with a 2xx answer
    try:
        payload: Any = None if blank else json.loads(text)
    except ValueError:
        payload, shape = None, f"non-JSON text {_snippet(text)}"
    kore_msg = kore_error_text(payload)
    if not 200 <= status_code < 300:
        detail = kore_msg or ("no error text" if blank else _snippet(text))
        cls = _STATUS_CLASSES.get(status_code) or (KoreServerError if status_code >= 500 else KoreApiError)
        message = f"{call.where} failed: HTTP {status_code}: {scrub(detail)}{_hint(call, status_code)}"
        raise cls(message, kore_message=scrub(kore_msg) if kore_msg else None, **about)
    if not isinstance(payload, dict):
        shape = shape or f"JSON that is not an object ({type(payload).__name__})"
    elif str(payload.get("status", "")).lower() == "failure":
        kore_msg = scrub(kore_msg or "no error text")
        message = f"{call.where} failed: Kore answered status 'failure': {kore_msg}"
        raise KoreApiError(message, kore_message=kore_msg, **about)
    elif call.endpoint.returns_data and not isinstance(payload.get("data"), dict):
        shape = "no 'data' object"
    elif call.operation == "get_campaign_status" and not isinstance(payload["data"].get("status"), str):
        shape = "no data.status"
    if shape:
        raise KoreBadResponseError(scrub(f"{call.where}: HTTP {status_code} with {shape}"), **about)
    return payload


# Pipelines: Kore.ai's documented shapes, checked before any request is sent.

#: The contact fields a contact list maps (createContactList's ``mapping``).
CONTACT_FIELDS = ("phoneNumber", "firstName", "lastName", "timeZone", "uniqueId", "contactPriority")
#: The statuses getAllCampaignDetails filters on, as Kore spells them.
LIST_STATUSES = ("Active", "Completed", "Ready", "Paused", "Preparing", "Stopped", "Scheduled", "Rescheduled")
_CONTACT_FIELD_SET = frozenset(CONTACT_FIELDS)
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
    """One contact for addContacts: ``phoneNumber`` (5-15 digits, optional +; separators dropped) and the
    mapped fields (blank ones left out)."""
    if not isinstance(contact, Mapping):
        raise KoreConfigurationError(f"a contact must be a mapping of fields; got {type(contact).__name__}")
    if not _CONTACT_FIELD_SET.issuperset(contact):  # a set test first: a load checks every row of a file
        unknown = sorted(str(key) for key in contact if key not in _CONTACT_FIELD_SET)
        raise KoreConfigurationError(f"unknown contact fields {unknown}; Kore.ai maps {', '.join(CONTACT_FIELDS)}")
    payload: dict[str, Any] = {}
    for key, value in contact.items():
        if isinstance(value, str):
            value = value.strip()
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise KoreConfigurationError(f"contact field {key} must be text or a number; got {value!r}")
        if value is not None and value != "":
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
