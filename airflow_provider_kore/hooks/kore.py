"""``KoreHook``: a ``kore`` connection, a keep-alive ``requests`` session, retries, and the four calls.

URLs come from :data:`airflow_provider_kore.api.ENDPOINTS`, tokens from
:class:`airflow_provider_kore.auth.JwtSigner`, and exceptions from
:func:`airflow_provider_kore.api.parse_answer`; this module only sends and retries.

Every request takes its turn from the process's :class:`~airflow_provider_kore.pacing.SyncPacer`
for the connection: hooks on one connection in one process share its request budget
(``max_requests_per_minute`` / ``max_requests_per_hour``) and its pause after a 429.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import Any

import requests
from requests.auth import AuthBase

from airflow_provider_kore import api, ids, pacing
from airflow_provider_kore._compat import BaseHook
from airflow_provider_kore.auth import JwtSigner
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreBadResponseError,
    KoreCampaignAmbiguousError,
    KoreCampaignNotFoundError,
    KoreConfigurationError,
    KoreConnectionError,
    KoreError,
    KoreNotFoundError,
    KoreOutcomeUnknownError,
    KoreRateLimitError,
    Secrets,
    redact,
)
from airflow_provider_kore.status import RUNNING_STATUSES

log = logging.getLogger(__name__)

#: A campaign id no one uses: the Test button reads its status to check the credentials.
TEST_CONNECTION_CAMPAIGN_ID = "cd-airflow-connection-test"
#: The Test button waits at most this long for a turn (budget or 429 pause).
TEST_CONNECTION_DEADLINE = 15.0


class KoreAuth(AuthBase):
    """Puts a (cached) JWT in the ``auth`` header of each request."""

    def __init__(self, signer: JwtSigner) -> None:
        self.signer = signer
        #: The token put on the latest request, so a 401 invalidates that one and no newer one.
        self.last_token: str | None = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.last_token = self.signer.token()
        request.headers["auth"] = self.last_token
        return request


class _OutcomeUnknown(Exception):
    """A non-idempotent request was sent, but no answer came back: it may or may not have acted."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _was_sent(exc: requests.exceptions.RequestException) -> bool:
    """False when the request provably never reached the server (connect failed or timed out)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return True
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (NewConnectionError, NameResolutionError)):
            return False
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return True


def _describe(exc: requests.exceptions.RequestException, sent: bool, timeout: float) -> str:
    """A short, secret-free reason for a network failure (requests' own text embeds the whole URL)."""
    if isinstance(exc, requests.exceptions.Timeout):
        what = "no answer" if sent else "could not connect"
        return f"{type(exc).__name__}: {what} within {timeout:g}s"
    if not sent:
        return f"{type(exc).__name__}: could not connect"
    return f"{type(exc).__name__}: the connection was dropped before an answer came"


class KoreHook(BaseHook):
    """Calls Kore.ai's campaign API with a ``kore`` connection.

    :param kore_conn_id: The ``kore`` connection: host = platform URL, login = Client ID,
        password = Client Secret, extras ``account_id`` (required), ``stream_id``, ``iid``,
        ``timeout``, ``max_retries``, ``jwt_algorithm``, ``jwt_per_request``, ``verify``,
        ``max_requests_per_minute``, ``max_requests_per_hour``.
    :param timeout: Seconds per request; overrides the connection's ``timeout`` extra.
    :param max_retries: Retries of a failed request; overrides the connection's ``max_retries``.
        A 429 is not a failure: the connection pauses and the request is sent again after the
        pause, without using a retry.
    :param deadline: Epoch seconds (``time.time()``) after which a request still waiting for
        its turn (the connection's budget, or a pause after a 429) gives up with
        :class:`~airflow_provider_kore.exceptions.KoreRateLimitError`; a sensor in poke mode
        passes the end of its timeout. None: each call waits at most
        :data:`~airflow_provider_kore.pacing.RATE_LIMIT_PATIENCE` seconds (15 minutes).
    """

    conn_name_attr = "kore_conn_id"
    default_conn_name = api.DEFAULT_CONN_ID
    conn_type = "kore"
    hook_name = "Kore.ai"

    def __init__(
        self,
        kore_conn_id: str = default_conn_name,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        self.kore_conn_id = kore_conn_id
        self._timeout_override = timeout
        self._max_retries_override = max_retries
        self.deadline = deadline
        self._sleep = time.sleep

    # -- connection form (Airflow 3.0 / 3.1; 3.2+ reads conn-fields from get_provider_info) --------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields as wtforms fields, built from the provider info's ``conn-fields``.

        Only ``wtforms`` is needed: Airflow 3.0/3.1's API server swaps its field classes for
        stand-ins and turns them into the React form's JSON schema; flask_appbuilder widgets and
        flask_babel labels (Airflow 2's web server) are ignored there, and 3.0 does not install them.
        """
        from wtforms import BooleanField, IntegerField, PasswordField, StringField
        from wtforms.validators import any_of

        from airflow_provider_kore import get_provider_info

        fields = get_provider_info()["connection-types"][0]["conn-fields"]
        widgets: dict[str, Any] = {}
        for name, spec in fields.items():
            schema = spec["schema"]
            kinds = schema["type"]
            choices = schema.get("enum")
            validators = [any_of(choices)] if choices else []
            field_class: Any = StringField
            if "boolean" in kinds:
                field_class = BooleanField
            elif "integer" in kinds:
                field_class = IntegerField
            elif schema.get("format") == "password":
                field_class = PasswordField
            widgets[name] = field_class(spec["label"], validators=validators, description=spec["description"])
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields, from the provider info's ``ui-field-behaviour``."""
        from airflow_provider_kore import get_provider_info

        behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
        return {
            "hidden_fields": behaviour["hidden-fields"],
            "relabeling": behaviour["relabeling"],
            "placeholders": behaviour["placeholders"],
        }

    # -- connection ---------------------------------------------------------------------------

    @cached_property
    def config(self) -> api.KoreConnectionConfig:
        """The connection, validated (raises :class:`KoreConfigurationError` naming a missing field)."""
        return api.KoreConnectionConfig.load(self.kore_conn_id)

    @property
    def timeout(self) -> float:
        return self._timeout_override if self._timeout_override is not None else self.config.timeout

    @property
    def retry_policy(self) -> api.RetryPolicy:
        retries = self._max_retries_override
        return api.RetryPolicy(max_retries=self.config.max_retries if retries is None else retries)

    @cached_property
    def signer(self) -> JwtSigner:
        config = self.config
        return JwtSigner(
            config.client_id,
            config.client_secret,
            algorithm=config.jwt_algorithm,
            per_request=config.jwt_per_request,
        )

    @cached_property
    def pacer(self) -> pacing.SyncPacer:
        """The process's turns for this connection (shared with every hook on it)."""
        config = self.config
        return pacing.sync_pacer(self.kore_conn_id, config.max_requests_per_minute, config.max_requests_per_hour)

    @cached_property
    def _auth(self) -> KoreAuth:
        return KoreAuth(self.signer)

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook.

        The environment (``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``) is read here, once,
        as requests would read it for the platform URL; ``trust_env`` is then off, so requests
        does not walk the environment again on every call (a fifth of the client's time).
        """
        config = self.config
        session = requests.Session()
        session.auth = self._auth
        session.headers["User-Agent"] = "airflow-provider-kore"
        session.proxies.update(requests.utils.get_environ_proxies(config.base_url))
        verify = config.verify
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.verify = verify
        session.trust_env = False
        return session

    def close(self) -> None:
        """Close the session's pooled connections."""
        if "session" in self.__dict__:
            self.session.close()

    # -- the four operations ------------------------------------------------------------------

    def get_campaign_status(self, campaign_id: str, stream_id: str | None = None) -> dict[str, Any]:
        """The campaign's status: the ``data`` object (``id``, ``status``, ``name``)."""
        return self._call("get_campaign_status", campaign_id, stream_id=stream_id)["data"]

    def get_campaign(self, campaign_id: str, stream_id: str | None = None) -> dict[str, Any]:
        """The campaign's full definition: the ``data`` object."""
        return self._call("get_campaign", campaign_id, stream_id=stream_id)["data"]

    def start_campaign(
        self, campaign_id: str, campaign_type: str = "sms", stream_id: str | None = None
    ) -> dict[str, Any]:
        """Start (``trigger=play``) a campaign; returns Kore's answer (``status``, ``message``, ``updatedAt``).

        A start whose answer never came (read timeout, dropped connection, gateway 5xx) is not
        sent again blindly: the campaign's status is read first, and the start is re-sent only
        if the campaign is not running.
        """
        prepared = api.prepare(
            self.config, "start_campaign", campaign_id, stream_id=stream_id, campaign_type=campaign_type
        )
        unknown_outcomes = 0
        while True:
            try:
                return self._send(prepared)
            except _OutcomeUnknown as unknown:
                unknown_outcomes += 1
                status = self.get_campaign_status(campaign_id, stream_id=stream_id).get("status", "")
                if str(status).lower() in RUNNING_STATUSES:
                    self.log.warning(
                        "Start of Kore.ai campaign %s got no answer (%s), but the campaign is %s: not sending it again",
                        prepared.campaign_id,
                        unknown.cause,
                        status,
                    )
                    return {
                        "status": status,
                        "message": "Campaign started (confirmed by a status read after an unanswered start)",
                        "updatedAt": None,
                    }
                if unknown_outcomes > self.retry_policy.max_retries:
                    raise KoreConnectionError(
                        f"Kore.ai start campaign for {prepared.subject} got no answer "
                        f"{unknown_outcomes} times ({unknown.cause}); the campaign is {status!r}",
                        operation=prepared.operation,
                        campaign_id=prepared.campaign_id,
                    ) from None
                self.log.warning(
                    "Start of Kore.ai campaign %s got no answer (%s) and the campaign is %s: sending it again",
                    prepared.campaign_id,
                    unknown.cause,
                    status,
                )

    def stop_campaign(
        self, campaign_id: str, campaign_type: str = "voice", stream_id: str | None = None
    ) -> dict[str, Any]:
        """Stop (``trigger=stop``) a campaign; returns Kore's answer (``status``, ``message``, ...)."""
        return self._call("stop_campaign", campaign_id, stream_id=stream_id, campaign_type=campaign_type)

    # -- pipelines (issue 14): thin wrappers over _send; the endpoints are in api.ENDPOINTS ----------

    def list_campaigns(
        self, campaign_type: str, statuses: str | Iterable[str] | None = None, stream_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every campaign of ``campaign_type`` (optionally only those in ``statuses``), read page by page.

        Each item is Kore's row with ``id`` set (voice rows carry ``_id``, SMS rows ``id``).
        """
        body: dict[str, Any] = {
            "type": ids.validate_campaign_type(campaign_type),
            "limit": api.CAMPAIGNS_PAGE_SIZE,
            "sortBy": {"createdAt": "asc"},  # oldest first: a campaign created meanwhile lands on a later page
        }
        wanted = api.campaign_statuses(statuses)
        if wanted:
            body["filters"] = {"status": wanted}
        rows = self._pages("list_campaigns", lambda page: {**body, "page": page, "skip": (page - 1) * body["limit"]})
        return self._with_ids(rows)

    @staticmethod
    def _with_ids(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        for row in rows:
            campaign_id = row.get("_id") or row.get("id")
            if not isinstance(campaign_id, str) or not campaign_id:
                raise KoreBadResponseError(f"Kore.ai list campaigns: a row without _id or id: {row.get('name')!r}")
            if campaign_id not in seen:  # a page boundary that moved meanwhile repeats a row
                seen.add(campaign_id)
                yield {**row, "id": campaign_id}

    def find_campaign(self, name: str, campaign_type: str, stream_id: str | None = None) -> str:
        """The id of the one ``campaign_type`` campaign named exactly ``name``.

        Raises :class:`KoreCampaignNotFoundError` when none is, :class:`KoreCampaignAmbiguousError`
        when several are.
        """
        if not isinstance(name, str) or not name.strip():
            raise KoreConfigurationError(f"campaign_name must be a non-empty string; got {name!r}")
        kind = ids.validate_campaign_type(campaign_type)
        found = [row["id"] for row in self.list_campaigns(kind, stream_id=stream_id) if row.get("name") == name]
        where = f"{kind} campaign named {name!r} in stream {self.config.resolve_stream_id(stream_id)!r}"
        if not found:
            raise KoreCampaignNotFoundError(f"Kore.ai has no {where}", operation="list_campaigns")
        if len(found) > 1:
            raise KoreCampaignAmbiguousError(
                f"Kore.ai has {len(found)} of {where} ({', '.join(found[:5])}): pass campaign_id instead"
            )
        return found[0]

    def iter_campaign_contacts(self, campaign_id: str, stream_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every contact outcome of the campaign, read lazily one page (of 100) at a time."""
        return self._pages(
            "get_campaign_contacts",
            lambda page: {"page": page, "limit": api.CONTACTS_PAGE_SIZE},
            campaign_id,
            stream_id,
        )

    def create_contact_list(
        self, name: str, description: str, allow_duplicates: bool = False, stream_id: str | None = None
    ) -> dict[str, Any]:
        """Create a contact list filled through the API (``source: passiveApi``); returns its ``data``."""
        body = {
            "name": api.validate_text("name", name, api.MAX_LIST_NAME_LENGTH),
            "description": api.validate_text("description", description, api.MAX_LIST_DESCRIPTION_LENGTH),
            "source": "passiveApi",
            "allowDuplicates": bool(allow_duplicates),
        }
        prepared = api.prepare(self.config, "create_contact_list", stream_id=stream_id, body=body)
        return self._send_once(prepared, "the list may exist now")["data"]

    def add_contacts(
        self,
        contact_list_name: str,
        contacts: Iterable[Mapping[str, Any]],
        batch_size: int = api.DEFAULT_BATCH_SIZE,
        stream_id: str | None = None,
    ) -> int:
        """Add contacts to a list, in order, ``batch_size`` per request; returns how many were sent.

        ``contacts`` is read lazily (a generator of a million rows is fine); each batch is checked
        (:func:`api.contact_payload`) before it is sent. Kore queues the add: it is not done on return.
        """
        name = api.validate_text("contact_list_name", contact_list_name, api.MAX_LIST_NAME_LENGTH)
        size = api.validate_batch_size(batch_size)
        self.config.resolve_stream_id(stream_id)
        rows = iter(contacts)
        sent = 0
        while True:
            batch = []
            for number, contact in enumerate(itertools.islice(rows, size), start=sent + 1):
                try:
                    batch.append(api.contact_payload(contact))
                except KoreConfigurationError as exc:
                    raise KoreConfigurationError(f"contact {number}: {exc}") from None
            if not batch:
                return sent
            body = {"contact_list_name": name, "data": batch}
            prepared = api.prepare(self.config, "add_contacts", stream_id=stream_id, body=body)
            self._send_once(prepared, f"{sent} contacts were sent before this batch of {len(batch)}")
            sent += len(batch)

    def _pages(
        self,
        operation: str,
        body_for: Callable[[int], dict[str, Any]],
        campaign_id: str | None = None,
        stream_id: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The ``results`` of each page while Kore says there are more; bad input raises here, not lazily."""

        def prepare(page: int) -> api.PreparedCall:
            return api.prepare(self.config, operation, campaign_id, stream_id=stream_id, body=body_for(page))

        first = prepare(1)

        def read() -> Iterator[dict[str, Any]]:
            page, prepared = 1, first
            while True:
                data = self._send(prepared)["data"]
                results = data.get("results")
                if not isinstance(results, list) or not all(isinstance(row, dict) for row in results):
                    raise KoreBadResponseError(
                        f"Kore.ai {prepared.endpoint.label} for {prepared.subject}: page {page} has no results list",
                        operation=operation,
                        campaign_id=campaign_id,
                    )
                yield from results
                more, total = data.get("hasMore"), data.get("totalPages")
                if more is None:  # the contacts page has no hasMore: totalPages, else a short page, ends it
                    more = page < total if isinstance(total, int) else len(results) >= body_for(page)["limit"]
                if not results or not more:
                    return
                page += 1
                prepared = prepare(page)

        return read()

    def _send_once(self, prepared: api.PreparedCall, note: str) -> dict[str, Any]:
        """:meth:`_send` for a request that must not be sent twice: a lost answer raises, it is not re-sent."""
        try:
            return self._send(prepared)
        except _OutcomeUnknown as unknown:
            raise KoreOutcomeUnknownError(
                f"Kore.ai {prepared.endpoint.label} for {prepared.subject} got no answer ({unknown.cause}); "
                f"it may have been done, so it is not sent again ({note}): check in Kore.ai"
            ) from None

    # -- end of pipelines ------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (a status read), as the UI's Test button runs it.

        A 404 for the probe campaign still proves the credentials: Kore checked the token first.
        """
        try:
            config = self.config
            prepared = api.prepare(config, "get_campaign_status", TEST_CONNECTION_CAMPAIGN_ID)
            self._send(
                prepared,
                retry_policy=api.RetryPolicy(max_retries=1),
                timeout=min(self.timeout, 15.0),
                deadline=time.time() + TEST_CONNECTION_DEADLINE,
            )
        except KoreNotFoundError:
            pass
        except KoreAuthError as err:
            return False, f"Kore.ai rejected the credentials (HTTP {err.http_status}): {err.kore_message or err}"
        except KoreError as err:
            return False, str(err)
        except Exception as err:  # the Test button must answer, whatever went wrong
            return False, redact(f"{type(err).__name__}: {err}", self._secret_or_none())
        return True, f"Connected to Kore.ai at {config.base_url}: credentials accepted for account {config.account_id}"

    # -- sending --------------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        campaign_id: str,
        *,
        stream_id: str | None = None,
        campaign_type: str | None = None,
    ) -> dict[str, Any]:
        prepared = api.prepare(self.config, operation, campaign_id, stream_id=stream_id, campaign_type=campaign_type)
        return self._send(prepared)

    def _secret_or_none(self) -> str | None:
        try:
            return self.config.client_secret
        except KoreConfigurationError:
            return None

    def _send(
        self,
        prepared: api.PreparedCall,
        *,
        retry_policy: api.RetryPolicy | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Send with retries, in turn; raise :class:`_OutcomeUnknown` for an unanswered non-idempotent call."""
        policy = retry_policy or self.retry_policy
        timeout = timeout or self.timeout
        secrets = Secrets(self.config.client_secret)
        pacer = self.pacer
        deadline = deadline if deadline is not None else self.deadline
        if deadline is None:
            until = pacing.clock() + pacing.RATE_LIMIT_PATIENCE
        else:
            until = pacing.clock() + (deadline - time.time())
        session = self.session
        warm_token = not self.config.jwt_per_request
        retries = 0
        refreshed_token = False
        while True:
            if warm_token:
                # Sign before taking the turn, so the request leaves as soon as it is ours.
                self.signer.token()
            try:
                sent_at = pacer.acquire(until, sleep=self._sleep)
            except pacing.BudgetExhausted as exc:
                what = (
                    "the connection's request budget (max_requests_per_minute / max_requests_per_hour) has no room"
                    if exc.reason == "budget"
                    else "Kore.ai's rate limit (429) leaves no room for a request"
                )
                raise KoreRateLimitError(
                    f"Kore.ai {prepared.endpoint.label} for {prepared.subject}: {what} before the deadline",
                    operation=prepared.operation,
                    campaign_id=prepared.campaign_id,
                ) from None
            try:
                response = session.request(
                    prepared.method,
                    prepared.url,
                    headers=prepared.headers,
                    data=prepared.body,
                    timeout=(timeout, timeout),
                )
            except requests.exceptions.RequestException as exc:
                sent = _was_sent(exc)
                cause = _describe(exc, sent, timeout)
                if sent and not prepared.endpoint.idempotent:
                    raise _OutcomeUnknown(cause) from None
                if retries >= policy.max_retries:
                    raise KoreConnectionError(
                        f"Kore.ai {prepared.endpoint.label} for {prepared.subject} failed "
                        f"after {retries + 1} attempts at {self.config.base_url}: {cause}",
                        operation=prepared.operation,
                        campaign_id=prepared.campaign_id,
                    ) from None
                retries += 1
                delay = policy.delay(retries)
                self.log.warning(
                    "Kore.ai %s for %s: %s; retry %d/%d in %.1fs",
                    prepared.endpoint.label,
                    prepared.subject,
                    cause,
                    retries,
                    policy.max_retries,
                    delay,
                )
                self._sleep(delay)
                continue

            status = response.status_code
            if status == 429:
                # Kore's rolling window is full: every request on the connection pauses, and this
                # one is sent again after the pause without using a retry.
                retry_after = api.parse_retry_after(response.headers.get("Retry-After"))
                pacer.record_rate_limited(sent_at, retry_after)
                self.log.debug("Kore.ai answered 429 to %s; queued again", prepared.endpoint.label)
                continue
            pacer.record_answer(sent_at)
            if status == 401 and not refreshed_token:
                # A token can be refused early (clock skew, a rotated secret): sign a new one, once.
                refreshed_token = True
                self.signer.invalidate(self._auth.last_token)
                self.log.info(
                    "Kore.ai answered 401 to %s; signing a new token and retrying once", prepared.endpoint.label
                )
                continue
            if policy.should_retry(status, retries):
                if not prepared.endpoint.idempotent and status not in api.REFUSED_STATUS:
                    raise _OutcomeUnknown(f"HTTP {status}")
                retries += 1
                retry_after = api.parse_retry_after(response.headers.get("Retry-After"))
                delay = policy.delay(retries, retry_after)
                self.log.warning(
                    "Kore.ai %s for %s: HTTP %d; retry %d/%d in %.1fs",
                    prepared.endpoint.label,
                    prepared.subject,
                    status,
                    retries,
                    policy.max_retries,
                    delay,
                )
                self._sleep(delay)
                continue
            return api.parse_answer(
                prepared,
                status,
                response.content,
                retry_after=response.headers.get("Retry-After"),
                secrets=secrets,
            )


__all__ = ["KoreApiError", "KoreAuth", "KoreHook"]
