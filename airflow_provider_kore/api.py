"""The Kore.ai campaign API itself, shared by the sync hook and the async trigger.

Everything here is plain Python with no I/O and no heavy import, so it costs nothing at
DAG-parse time:

* :data:`ENDPOINTS` - the one table of documented operations (method, path, query, body).
  Nothing else in the provider builds a URL.
* :class:`KoreConnectionConfig` - a ``kore`` connection turned into validated settings.
* :func:`prepare` - validated input -> the exact request (method, URL, headers, body).
* :func:`parse_answer` - (HTTP status, body) -> the JSON object, or the one matching exception.
* :class:`RetryPolicy` - which answers are retried, and how long to wait in between.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

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

# Ids, campaign types and the default connection id live in a module without dataclasses, so the
# operators and the sensor can check their arguments at DAG-parse time without importing this one.
from airflow_provider_kore.ids import (  # noqa: F401 - re-exported: api.validate_id, api.DEFAULT_CONN_ID...
    CAMPAIGN_TYPES,
    DEFAULT_CONN_ID,
    MAX_ID_LENGTH,
    MAX_LIST_DESCRIPTION_LENGTH,
    MAX_LIST_NAME_LENGTH,
    validate_campaign_type,
    validate_id,
    validate_text,
)


@dataclass(frozen=True)
class Endpoint:
    """One documented operation. ``{name}`` in path or query values is filled by :func:`prepare`."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    #: Safe to send twice. Starting a campaign is not: an unanswered start is checked first.
    idempotent: bool = True
    #: What the user reads in messages: "get campaign status", "start campaign", ...
    label: str = ""
    #: The answer must carry a ``data`` object (the read operations).
    returns_data: bool = False
    #: What the call is about, in messages; filled from the path values and the body's fields.
    subject: str = "campaign {campaign_id!r}"


# The four pages in Kore.ai's documentation, to the letter. Where the pages disagree (the stop
# page's path has no leading /campaign; the start page has no accountId query) each is followed
# as written.
ENDPOINTS: dict[str, Endpoint] = {
    "get_campaign_status": Endpoint(
        "POST",
        "/campaign/api/v2/public/{stream_id}/campaign/{campaign_id}/status",
        (("accountId", "{account_id}"), ("view", "status")),
        label="get campaign status",
        returns_data=True,
    ),
    "get_campaign": Endpoint(
        "GET",
        "/campaign/api/v2/public/{stream_id}/campaign/{campaign_id}",
        (("accountId", "{account_id}"),),
        label="get campaign",
        returns_data=True,
    ),
    "start_campaign": Endpoint(
        "POST",
        "/campaign/api/v2/public/{stream_id}/campaign/{campaign_id}",
        (("campaignType", "{campaign_type}"), ("trigger", "play")),
        idempotent=False,
        label="start campaign",
    ),
    "stop_campaign": Endpoint(
        "POST",
        "/api/v2/public/{stream_id}/campaign/trigger/{campaign_id}",
        (("accountId", "{account_id}"), ("campaignType", "{campaign_type}"), ("trigger", "stop")),
        label="stop campaign",
    ),
    # -- pipelines (issue 14): Kore.ai's contact-list and contact-outcome pages, followed as written.
    "list_campaigns": Endpoint(
        "POST",
        "/campaign/api/v2/public/{stream_id}/campaign/getAllCampaignDetails",
        (("accountId", "{account_id}"),),
        label="list campaigns",
        returns_data=True,
        subject="{type} campaigns",
    ),
    # The seed status path with view=contacts; this page shows no accountId query.
    "get_campaign_contacts": Endpoint(
        "POST",
        "/campaign/api/v2/public/{stream_id}/campaign/{campaign_id}/status",
        (("view", "contacts"),),
        label="get campaign contacts",
        returns_data=True,
    ),
    # Creating a list or adding contacts twice is not harmless: a lost answer is never re-sent.
    "create_contact_list": Endpoint(
        "POST",
        "/campaign/api/v2/public/{stream_id}/campaign/contactList/createContactList",
        (("accountId", "{account_id}"),),
        idempotent=False,
        label="create contact list",
        returns_data=True,
        subject="contact list {name!r}",
    ),
    # An older api/1.1 path: no /campaign prefix, the application id (iid) in the path, no query.
    "add_contacts": Endpoint(
        "POST",
        "/api/1.1/public/{iid}/campaign/contactList/addContacts",
        (),
        idempotent=False,
        label="add contacts",
        subject="contact list {contact_list_name!r}",
    ),
}

# ---------------------------------------------------------------------------------------------
# The connection.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
JWT_ALGORITHMS = ("HS256", "HS512")


def _extra(extra: Mapping[str, Any], key: str) -> Any:
    """An extra field, accepting the ``extra__kore__`` prefix older forms wrote; blank is unset."""
    for name in (key, f"extra__kore__{key}"):
        value = extra.get(name)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value.strip() if isinstance(value, str) else value
    return None


def _as_bool(key: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise KoreConfigurationError(f"connection extra {key} must be true or false; got {value!r}")


def _as_number(key: str, value: Any, default: float | None, *, minimum: float, integer: bool) -> Any:
    if value is None:
        return default
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise KoreConfigurationError(f"connection extra {key} must be a number; got {value!r}") from None
    if isinstance(value, bool) or number < minimum:
        raise KoreConfigurationError(f"connection extra {key} must be at least {minimum}; got {value!r}")
    return number


def normalise_base_url(host: str | None, *, port: int | None = None, schema: str | None = None) -> str:
    """``https://platform.kore.ai`` from a full URL or a bare host (https unless said otherwise)."""
    if not host or not str(host).strip():
        raise KoreConfigurationError("the kore connection has no host (the Kore.ai platform URL)")
    host = str(host).strip().rstrip("/")
    if "://" not in host:
        scheme = schema.strip().lower() if schema and schema.strip().lower() in ("http", "https") else "https"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KoreConfigurationError(f"the kore connection's host must be an http(s) URL; got {host!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise KoreConfigurationError("the kore connection's host must be a plain URL (no query or credentials)")
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{int(port)}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class KoreConnectionConfig:
    """A ``kore`` connection, validated. The secret is kept out of ``repr``."""

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    account_id: str
    stream_id: str | None = None
    iid: str | None = None
    timeout: float = 30.0
    max_retries: int = 5
    jwt_algorithm: str = "HS256"
    verify: bool | str = True
    jwt_per_request: bool = False
    max_requests_per_minute: int | None = None
    max_requests_per_hour: int | None = None

    @classmethod
    def load(cls, conn_id: str) -> KoreConnectionConfig:
        """Look the connection up, validate it, and register its secret with the masker.

        Synchronous: Airflow's lookup and masker may wait on the task supervisor. The hook calls
        it directly; on an event loop run it in a worker thread (``_compat.run_sync``).
        """
        from airflow_provider_kore._compat import get_connection, mask_secret

        config = cls.from_connection(get_connection(conn_id))
        mask_secret(config.client_secret)
        return config

    @classmethod
    def from_connection(cls, conn: Any) -> KoreConnectionConfig:
        """Build from an Airflow ``Connection`` (or anything with the same attributes)."""
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        if not isinstance(extra, Mapping):
            raise KoreConfigurationError("the kore connection's extra must be a JSON object")
        client_id = getattr(conn, "login", None)
        secret = getattr(conn, "password", None)
        if not client_id or not str(client_id).strip():
            raise KoreConfigurationError("the kore connection has no Client ID (the login field)")
        if not secret:
            raise KoreConfigurationError("the kore connection has no Client Secret (the password field)")
        account_id = _extra(extra, "account_id")
        if account_id is None:
            raise KoreConfigurationError("the kore connection has no account_id extra (the Kore.ai account id)")
        stream_id = _extra(extra, "stream_id")
        iid = _extra(extra, "iid")
        algorithm = str(_extra(extra, "jwt_algorithm") or "HS256").upper()
        if algorithm not in JWT_ALGORITHMS:
            raise KoreConfigurationError(
                f"connection extra jwt_algorithm must be one of {', '.join(JWT_ALGORITHMS)}; got {algorithm!r}"
            )
        verify_raw = _extra(extra, "verify")
        verify: bool | str
        if isinstance(verify_raw, str) and verify_raw.lower() not in _TRUE | _FALSE:
            verify = verify_raw  # a CA bundle path
        else:
            verify = _as_bool("verify", verify_raw, True)
        return cls(
            base_url=normalise_base_url(
                getattr(conn, "host", None), port=getattr(conn, "port", None), schema=getattr(conn, "schema", None)
            ),
            client_id=validate_id("client_id", str(client_id).strip()),
            client_secret=str(secret),
            account_id=validate_id("account_id", str(account_id)),
            stream_id=validate_id("stream_id", str(stream_id)) if stream_id is not None else None,
            iid=validate_id("iid", str(iid)) if iid is not None else None,
            timeout=_as_number("timeout", _extra(extra, "timeout"), 30.0, minimum=0.001, integer=False),
            max_retries=_as_number("max_retries", _extra(extra, "max_retries"), 5, minimum=0, integer=True),
            jwt_algorithm=algorithm,
            verify=verify,
            jwt_per_request=_as_bool("jwt_per_request", _extra(extra, "jwt_per_request"), False),
            max_requests_per_minute=_as_number(
                "max_requests_per_minute", _extra(extra, "max_requests_per_minute"), None, minimum=1, integer=True
            ),
            max_requests_per_hour=_as_number(
                "max_requests_per_hour", _extra(extra, "max_requests_per_hour"), None, minimum=1, integer=True
            ),
        )

    def resolve_stream_id(self, stream_id: str | None) -> str:
        """The operation's stream id, else the connection's; an error if neither is set."""
        if stream_id is not None:
            return validate_id("stream_id", stream_id)
        if self.stream_id is None:
            raise KoreConfigurationError(
                "no stream_id: set the stream_id extra on the kore connection or pass stream_id= to the task"
            )
        return self.stream_id


# ---------------------------------------------------------------------------------------------
# Requests.


@dataclass(frozen=True)
class PreparedCall:
    """One request, ready to send (the ``auth`` header is added by the signer at send time)."""

    operation: str
    endpoint: Endpoint
    campaign_id: str | None
    stream_id: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    #: What the call is about, for messages: "campaign 'cd-1'", "contact list 'Nightly'".
    subject: str = ""


_PATH_PARAMS = ("campaign_id", "campaign_type", "iid")


def prepare(
    config: KoreConnectionConfig,
    operation: str,
    campaign_id: object = None,
    *,
    stream_id: str | None = None,
    body: Mapping[str, Any] | None = None,
    **params: object,
) -> PreparedCall:
    """Validate the input and build the documented request for ``operation``.

    ``params`` fill the endpoint's ``{campaign_id}``, ``{campaign_type}`` and ``{iid}`` (default:
    the connection's ``iid`` extra, else the stream id); ``body`` is sent as JSON on a POST
    (default ``{}``). ``campaign_id`` may also come second, positionally.
    """
    endpoint = ENDPOINTS[operation]
    unknown = sorted(set(params) - set(_PATH_PARAMS))
    if unknown:
        raise TypeError(f"prepare() got unexpected parameters: {', '.join(unknown)}")
    if campaign_id is not None:
        params["campaign_id"] = campaign_id
    template = endpoint.path + str(endpoint.query)
    campaign = params.get("campaign_id")
    if "{campaign_id}" in template or campaign is not None:
        campaign = validate_id("campaign_id", campaign)
    stream = config.resolve_stream_id(stream_id)
    campaign_type = params.get("campaign_type")
    iid = validate_id("iid", params.get("iid") or config.iid or stream)
    values = {
        "stream_id": quote(stream, safe=""),
        "campaign_id": quote(campaign or "", safe=""),
        "account_id": config.account_id,
        "campaign_type": validate_campaign_type(campaign_type) if campaign_type is not None else "",
        "iid": quote(iid, safe=""),
    }
    if "{campaign_type}" in template and not values["campaign_type"]:
        raise KoreConfigurationError(f"{endpoint.label} needs a campaign_type ({', '.join(CAMPAIGN_TYPES)})")
    path = endpoint.path.format(**values)
    query = urlencode([(key, value.format(**values)) for key, value in endpoint.query])
    headers = {
        "iid": iid,
        "accountId": config.account_id,
        "Accept": "application/json",
    }
    payload = None
    if endpoint.method == "POST":
        headers["Content-Type"] = "application/json"
        payload = json.dumps(dict(body or {}), separators=(",", ":")).encode()
    elif body is not None:
        raise TypeError(f"{endpoint.label} is a {endpoint.method} and takes no body")
    try:
        subject = endpoint.subject.format_map({**(body or {}), "campaign_id": campaign, "stream_id": stream})
    except (KeyError, ValueError, IndexError):
        subject = endpoint.label
    return PreparedCall(
        operation=operation,
        endpoint=endpoint,
        campaign_id=campaign,
        stream_id=stream,
        method=endpoint.method,
        url=f"{config.base_url}{path}?{query}" if query else f"{config.base_url}{path}",
        headers=headers,
        body=payload,
        subject=subject,
    )


# ---------------------------------------------------------------------------------------------
# Pipelines (issue 14): Kore.ai's documented limits, checked before any request is sent.

#: The contact fields a contact list maps (createContactList's ``mapping``).
CONTACT_FIELDS = ("phoneNumber", "firstName", "lastName", "timeZone", "uniqueId", "contactPriority")
LIST_STATUSES = ("Active", "Completed", "Ready", "Paused", "Preparing", "Stopped", "Scheduled", "Rescheduled")
#: Contact outcomes per page: the documented maximum.
CONTACTS_PAGE_SIZE = 100
CAMPAIGNS_PAGE_SIZE = 100
DEFAULT_BATCH_SIZE = 500
_PHONE = re.compile(r"\+?[0-9]{5,15}")
_PHONE_SEPARATORS = re.compile(r"[\s().-]")


def validate_batch_size(value: object) -> int:
    """A batch size: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KoreConfigurationError(f"batch_size must be an integer >= 1; got {value!r}")
    return value


def campaign_statuses(statuses: object) -> list[str] | None:
    """The documented capitalisation of each status (matched case-insensitively); None for no filter."""
    if statuses is None:
        return None
    known = {status.lower(): status for status in LIST_STATUSES}
    items = [statuses] if isinstance(statuses, str) else statuses
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise KoreConfigurationError(f"statuses must be a status name or a list of them; got {statuses!r}")
    names = [known.get(str(item).strip().lower()) for item in items]
    if None in names or not names:
        raise KoreConfigurationError(f"statuses must be among {', '.join(LIST_STATUSES)}; got {statuses!r}")
    return [name for name in names if name]


def contact_payload(contact: object) -> dict[str, Any]:
    """One contact for addContacts: ``phoneNumber`` (digits, optional +) and the mapped fields.

    Separators (spaces, dots, dashes, brackets) are dropped from the number; blank fields are
    left out. Raises :class:`KoreConfigurationError` saying what is wrong.
    """
    if not isinstance(contact, Mapping):
        raise KoreConfigurationError(f"a contact must be a mapping of fields; got {type(contact).__name__}")
    unknown = sorted(str(key) for key in contact if key not in CONTACT_FIELDS)
    if unknown:
        raise KoreConfigurationError(f"unknown contact fields {unknown}; Kore.ai maps {', '.join(CONTACT_FIELDS)}")
    payload: dict[str, Any] = {}
    for key, value in contact.items():
        if isinstance(value, str):
            value = value.strip()
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


# ---------------------------------------------------------------------------------------------
# Answers -> data or exception. The one place an HTTP failure becomes an exception.


def kore_error_text(payload: Any) -> str | None:
    """Kore's own error text: ``errors[].msg``, else ``message`` / ``error``."""
    if not isinstance(payload, Mapping):
        return None
    errors = payload.get("errors")
    if isinstance(errors, list):
        texts = [str(e.get("msg") or e.get("message")) for e in errors if isinstance(e, Mapping)]
        texts = [t for t in texts if t and t != "None"]
        if texts:
            return "; ".join(texts)
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


def parse_answer(
    call: PreparedCall,
    status_code: int,
    body: bytes | str,
    *,
    retry_after: str | None = None,
    secrets: Secrets | None = None,
) -> dict[str, Any]:
    """Return the JSON object of a good answer; raise the matching :class:`KoreApiError` otherwise.

    ``secrets`` are removed from every message (JWTs always are).
    """
    scrub = (secrets or Secrets()).redact
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        payload: Any = json.loads(text) if text.strip() else None
    except ValueError:
        payload = None
        parsed = False
    else:
        parsed = True
    where = f"Kore.ai {call.endpoint.label} for {call.subject}"

    if not 200 <= status_code < 300:
        kore_msg = kore_error_text(payload) if parsed else None
        detail = kore_msg or (_snippet(text) if text.strip() else "no error text")
        cls = _STATUS_CLASSES.get(status_code) or (KoreServerError if status_code >= 500 else KoreApiError)
        message = scrub(f"{where} failed: HTTP {status_code}: {detail}")
        kwargs: dict[str, Any] = {
            "operation": call.operation,
            "campaign_id": call.campaign_id,
            "status_code": status_code,
            "kore_message": scrub(kore_msg) if kore_msg else None,
        }
        if cls is KoreRateLimitError:
            kwargs["retry_after"] = parse_retry_after(retry_after)
        raise cls(message, **kwargs)

    if not parsed or not isinstance(payload, dict):
        if not text.strip():
            shape = "an empty body"
        elif parsed:
            shape = f"JSON that is not an object ({type(payload).__name__})"
        else:
            shape = "non-JSON text " + _snippet(text)
        raise KoreBadResponseError(
            scrub(f"{where}: HTTP {status_code} with {shape}; expected a JSON object"),
            operation=call.operation,
            campaign_id=call.campaign_id,
            status_code=status_code,
        )
    if str(payload.get("status", "")).lower() == "failure":
        kore_msg = kore_error_text(payload) or "no error text"
        raise KoreApiError(
            scrub(f"{where} failed: Kore answered status 'failure': {kore_msg}"),
            operation=call.operation,
            campaign_id=call.campaign_id,
            status_code=status_code,
            kore_message=scrub(kore_msg),
        )
    if call.endpoint.returns_data:
        data = payload.get("data")
        if not isinstance(data, dict):
            raise KoreBadResponseError(
                f"{where}: HTTP {status_code} without a 'data' object",
                operation=call.operation,
                campaign_id=call.campaign_id,
                status_code=status_code,
            )
        if call.operation == "get_campaign_status" and not isinstance(data.get("status"), str):
            raise KoreBadResponseError(
                f"{where}: HTTP {status_code} without data.status",
                operation=call.operation,
                campaign_id=call.campaign_id,
                status_code=status_code,
            )
    return payload


def _snippet(text: str) -> str:
    return repr(" ".join(text.split())[:120])


# ---------------------------------------------------------------------------------------------
# Retries.

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# A 5xx from a gateway or the app may come after the request was acted on; a 429 or 503 is a refusal.
REFUSED_STATUS = frozenset({429, 503})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if value is None or not str(value).strip():
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        import time

        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, never shorter than a (capped) ``Retry-After``."""

    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 120.0

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** max(0, retry_number - 1)))
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_max))
        return wait

    def should_retry(self, status_code: int, retries_done: int) -> bool:
        """True if an answer with ``status_code`` is worth trying again."""
        return status_code in RETRYABLE_STATUS and retries_done < self.max_retries
