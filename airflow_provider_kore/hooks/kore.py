"""``KoreHook``: the sync driver of :class:`~airflow_provider_kore.engine.Exchange` over a keep-alive ``requests``
session (it takes its pacing turn, signs, sends, sleeps; the engine decides), and the campaign and pipeline calls."""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import Any

import requests

from airflow_provider_kore import api, connection_form_widgets, engine, ids, pacing, ui_field_behaviour
from airflow_provider_kore._compat import BaseHook
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreBadResponseError,
    KoreCampaignAmbiguousError,
    KoreCampaignNotFoundError,
    KoreConfigurationError,
    KoreError,
    KoreNotFoundError,
    KoreOutcomeUnknownError,
    Secrets,
    redact,
)
from airflow_provider_kore.shared import Driver, JwtSigner, Outcome, answer, network_failure

#: The Test button reads the status of a campaign no one has, for at most this many seconds.
TEST_CONNECTION_CAMPAIGN_ID = "cd-airflow-connection-test"
TEST_CONNECTION_DEADLINE = 15.0
PAGE = 100  # rows per page of campaigns and of contact outcomes (Kore's maximum for those)
DEFAULT_BATCH_SIZE = 500  # contacts per add-contacts request: Kore documents no limit, so bodies stay small


class KoreHook(Driver, BaseHook):
    """Calls Kore.ai's campaign API with a ``kore`` connection.

    :param kore_conn_id: The ``kore`` connection: host = platform URL, login = Client ID, password = Client
        Secret, extras ``account_id`` (required), ``stream_id``, ``iid``, ``timeout``, ``max_retries``,
        ``jwt_algorithm``, ``jwt_per_request``, ``verify``.
    :param timeout: Seconds per request; overrides the connection's ``timeout``.
    :param max_retries: Retries of a transient failure (5xx, network); overrides the connection's. A 429
        spends none: the connection pauses and the request is sent again after the pause.
    :param deadline: Epoch seconds after which a call gives up (``KoreRateLimitError`` while waiting for a
        turn); None: each call waits at most ``pacing.RATE_LIMIT_PATIENCE`` seconds for its turn.
    """

    conn_name_attr = "kore_conn_id"
    default_conn_name = ids.DEFAULT_CONN_ID
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

    # Airflow 3.0 / 3.1 build the connection form from these (3.2+ from the provider info's conn-fields).
    get_connection_form_widgets = staticmethod(connection_form_widgets)
    get_ui_field_behaviour = staticmethod(ui_field_behaviour)

    @cached_property
    def config(self) -> KoreConnectionConfig:
        """The connection, validated (raises :class:`KoreConfigurationError` naming the field)."""
        return KoreConnectionConfig.load(self.kore_conn_id)

    @property
    def timeout(self) -> float:
        return self._timeout_override if self._timeout_override is not None else self.config.timeout

    @cached_property
    def signer(self) -> JwtSigner:
        return JwtSigner(self.config)

    @cached_property
    def pacer(self) -> pacing.SyncPacer:
        """The process's pauses for this connection (after a 429, during an outage)."""
        return pacing.sync_pacer(self.kore_conn_id)

    def _new_session(self) -> requests.Session:
        """A keep-alive session. Proxies and the CA bundle are read from the environment here, once, as requests
        would; ``trust_env`` is then off so requests does not re-read them per call."""
        session = requests.Session()
        session.headers["User-Agent"] = "airflow-provider-kore"
        session.proxies.update(requests.utils.get_environ_proxies(self.config.base_url))
        session.verify = self.config.tls_verify()
        session.trust_env = False
        return session

    session = cached_property(_new_session)

    def close(self) -> None:
        """Close the session's pooled connections."""
        if (session := self.__dict__.pop("session", None)) is not None:
            session.close()

    def get_campaign_status(
        self, campaign_id: str, stream_id: str | None = None, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """The campaign's status: the ``data`` object (``id``, ``status``, ``name``).

        :param deadline: Epoch seconds by which to give up (a sensor's poke passes its own bound).
        """
        status = self._request("get_campaign_status", campaign_id=campaign_id, stream_id=stream_id, deadline=deadline)
        return status["data"]

    def get_campaign(self, campaign_id: str, stream_id: str | None = None) -> dict[str, Any]:
        """The campaign's full definition: the ``data`` object."""
        return self._request("get_campaign", campaign_id=campaign_id, stream_id=stream_id)["data"]

    def start_campaign(
        self, campaign_id: str, campaign_type: str = "sms", stream_id: str | None = None
    ) -> dict[str, Any]:
        """Start (``trigger=play``) a campaign; returns Kore's answer (``status``, ``message``, ``updatedAt``).

        Sent again only when Kore's answer proves it did not act (a 429, a 503, a connection that never opened).
        A start whose answer was lost (a 500/502/504, a read timeout, a connection dropped after sending) is never
        re-sent: it raises :class:`~airflow_provider_kore.exceptions.KoreOutcomeUnknownError` naming the status.
        """
        call: dict[str, Any] = {"campaign_id": campaign_id, "campaign_type": campaign_type, "stream_id": stream_id}
        try:
            return self._request("start_campaign", **call)
        except KoreOutcomeUnknownError as exc:
            try:
                exc.status = str(self.get_campaign_status(campaign_id, stream_id=stream_id).get("status"))
                now = f"the campaign's status read afterwards is {exc.status!r}"
            except KoreError as read_error:
                now = f"its status could not be read afterwards ({read_error})"
            exc.args = (
                f"{exc.args[0]}; {now}. A task retry reads the campaign first and starts it only if "
                "the lost start did not run",
            )
            raise

    def stop_campaign(
        self,
        campaign_id: str,
        campaign_type: str = "voice",
        stream_id: str | None = None,
        *,
        deadline: float | None = None,
        priority: bool = False,
    ) -> dict[str, Any]:
        """Stop (``trigger=stop``) a campaign; returns Kore's answer (``status``, ``message``, ...).

        :param deadline: Epoch seconds by which to give up (``on_kill`` passes its own bound).
        :param priority: Do not wait behind the connection's pause: a stop outranks reads.
        """
        call = {"campaign_id": campaign_id, "campaign_type": campaign_type, "stream_id": stream_id}
        return self._request("stop_campaign", deadline=deadline, priority=priority, **call)

    def list_campaigns(
        self, campaign_type: str, statuses: str | Iterable[str] | None = None, stream_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every campaign of ``campaign_type`` (optionally only those in ``statuses``), page by page: Kore's rows
        with ``id`` set (voice rows carry ``_id``, SMS rows ``id``)."""
        # Oldest first: a campaign created meanwhile lands on a later page.
        body = {"type": ids.validate_campaign_type(campaign_type), "limit": PAGE, "sortBy": {"createdAt": "asc"}}
        if wanted := api.campaign_statuses(statuses):
            body["filters"] = {"status": wanted}
        pages = self._pages(
            "list_campaigns", lambda page: {**body, "page": page, "skip": (page - 1) * PAGE}, stream_id=stream_id
        )
        return _with_ids(pages)

    def find_campaign(self, name: str, campaign_type: str, stream_id: str | None = None) -> str:
        """The id of the one ``campaign_type`` campaign named exactly ``name`` (else
        :class:`KoreCampaignNotFoundError` or :class:`KoreCampaignAmbiguousError`)."""
        ids.validate_campaign_name(name)
        kind = ids.validate_campaign_type(campaign_type)
        found = [row["id"] for row in self.list_campaigns(kind, stream_id=stream_id) if row.get("name") == name]
        where = f"{kind} campaign named {name!r} in stream {self.config.resolve_stream_id(stream_id)[0]!r}"
        if not found:
            raise KoreCampaignNotFoundError(f"Kore.ai has no {where}", operation="list_campaigns")
        if len(found) > 1:
            raise KoreCampaignAmbiguousError(
                f"Kore.ai has {len(found)} of {where} ({', '.join(found[:5])}): pass campaign_id instead"
            )
        return str(found[0])

    def iter_campaign_contacts(self, campaign_id: str, stream_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every contact outcome of the campaign, read lazily one page (of 100) at a time."""
        read = {"campaign_id": campaign_id, "stream_id": stream_id}
        return self._pages("get_campaign_contacts", lambda page: {"limit": PAGE, "page": page}, **read)

    def create_contact_list(
        self, name: str, description: str, allow_duplicates: bool = False, stream_id: str | None = None
    ) -> dict[str, Any]:
        """Create a contact list filled through the API (``source: passiveApi``); returns its ``data``. A lost
        answer raises :class:`KoreOutcomeUnknownError` (the list may exist)."""
        body = {
            "name": ids.validate_text("name", name, ids.MAX_LIST_NAME_LENGTH),
            "description": ids.validate_text("description", description, ids.MAX_LIST_DESCRIPTION_LENGTH),
            "source": "passiveApi",
            "allowDuplicates": bool(allow_duplicates),
        }
        subject = f"contact list {name!r}"
        return self._request("create_contact_list", stream_id=stream_id, body=body, subject=subject)["data"]

    def add_contacts(
        self,
        contact_list_name: str,
        contacts: Iterable[Mapping[str, Any]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        stream_id: str | None = None,
    ) -> int:
        """Add contacts to a list, in order, ``batch_size`` per request; returns how many were sent.

        ``contacts`` is read lazily; each batch is checked (:func:`~.api.contact_payload`) before it is sent. Kore
        queues the add: it is not done on return. A lost answer raises :class:`KoreOutcomeUnknownError`, never re-sent.
        """
        name = ids.validate_text("contact_list_name", contact_list_name, ids.MAX_LIST_NAME_LENGTH)
        ids.validate_batch_size(batch_size)
        self.config.resolve_stream_id(stream_id)
        rows, sent = enumerate(contacts, start=1), 0
        while batch := list(itertools.islice(rows, batch_size)):
            data = []
            for number, contact in batch:
                try:
                    data.append(api.contact_payload(contact))
                except KoreConfigurationError as exc:
                    raise KoreConfigurationError(f"contact {number}: {exc}") from None
            body = {"contact_list_name": name, "data": data}
            try:
                self._request("add_contacts", stream_id=stream_id, body=body, subject=f"contact list {name!r}")
            except KoreOutcomeUnknownError as exc:
                exc.args = (f"{exc.args[0]} ({sent} contacts were sent before this batch of {len(batch)})",)
                raise
            sent += len(batch)
        return sent

    def _pages(self, operation: str, body: Callable[[int], dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
        """The ``results`` of each page, asked for by ``body(page)``, while Kore says there are more; bad input raises
        here, not lazily."""
        api.prepare(self.config, operation, body=body(1), **params)

        def read() -> Iterator[dict[str, Any]]:
            for page in itertools.count(1):
                data = self._request(operation, body=body(page), **params)["data"]
                results = data.get("results")
                if not isinstance(results, list) or not all(isinstance(row, dict) for row in results):
                    what = f"Kore.ai {api.ENDPOINTS[operation].label}: page {page} has no results list"
                    raise KoreBadResponseError(what, operation=operation, campaign_id=params.get("campaign_id"))
                yield from results
                more, total = data.get("hasMore"), data.get("totalPages")
                if more is None:  # the contacts page has no hasMore: totalPages, else a short page, ends it
                    more = page < total if isinstance(total, int) else len(results) >= PAGE
                if not results or not more:
                    return

        return read()

    def test_connection(self) -> tuple[bool, str]:
        """The Test button: one status read of a campaign no one has. Kore checks the token before the campaign,
        so "campaign not found" proves the credentials and the stream; another 404 (an unknown stream, a wrong
        platform URL) does not."""
        config = None
        try:
            config = self.config
            probe = copy.copy(self)  # this hook, bounded for the click: one retry, at most 15 s
            probe._max_retries_override, probe._timeout_override = 1, min(self.timeout, TEST_CONNECTION_DEADLINE)
            # The API server builds a hook per click under a throwaway connection id: a pacer of its own, never
            # registered, so the long-running server does not grow.
            probe.__dict__["pacer"] = pacing.SyncPacer(self.kore_conn_id)
            probe.get_campaign_status(TEST_CONNECTION_CAMPAIGN_ID, deadline=time.time() + TEST_CONNECTION_DEADLINE)
        except KoreNotFoundError as err:
            text = (err.kore_message or "").lower()
            unknown_campaign = "campaign" in text and any(w in text for w in ("not found", "does not exist", "no such"))
            if not unknown_campaign or any(w in text for w in ("stream", "bot", "route", "cannot", "path")):
                return False, f"{err}: check the Stream / Bot ID and the platform URL"
        except KoreError as err:
            return False, str(err)
        except Exception as err:  # the Test button must answer, whatever went wrong
            return False, redact(f"{type(err).__name__}: {err}", config.client_secret if config else None)
        config = self.config
        return True, f"Connected to Kore.ai at {config.base_url}: credentials accepted for account {config.account_id}"

    def _request(self, operation: str, *, deadline: float | None = None, priority: bool = False, **params: Any) -> Any:
        """Prepare (``params`` go to :func:`api.prepare`), then send until the engine says done; raise what it says."""
        deadline = self.deadline if deadline is None else deadline
        until = pacing.clock() + (pacing.RATE_LIMIT_PATIENCE if deadline is None else deadline - time.time())
        retries = self.config.max_retries if self._max_retries_override is None else self._max_retries_override
        call, secrets = api.prepare(self.config, operation, **params), Secrets(self.config.client_secret)
        exchange = engine.Exchange(call, secrets=secrets, max_retries=retries, priority=priority, deadline=until)
        # A priority stop may run in on_kill, a SIGTERM handler interrupting this thread mid-request: it takes no
        # lock the interrupted call could hold (its own session, the pacer's lock-free path).
        pacer = self.pacer
        with self._new_session() if priority else contextlib.nullcontext() as own_session:
            while True:
                try:
                    sent_at = pacer.acquire_priority() if priority else pacer.acquire(until, sleep=self._sleep)
                except pacing.BudgetExhausted as exc:
                    raise exchange.out_of_time(exc.reason) from None
                token = self.signer.token()  # after the turn: a wait for it (a 429 pause) may outlast a cached token
                what = self._send(own_session or self.session, exchange, token)  # a reload builds a new session
                decision = self._decided(exchange, what, sent_at, token, pacer)
                if (result := decision.final()) is not None:
                    return result
                if decision.action == "reload":
                    exchange.reloaded(self._reload()).final()  # the 401 stands unless the connection changed
                    exchange.call = api.prepare(self.config, operation, **params)  # maybe another host or account
                    exchange.secrets = Secrets(self.config.client_secret)
                elif decision.action == "retry":
                    self._sleep(decision.delay)

    def _send(self, session: requests.Session, exchange: engine.Exchange, token: str) -> Outcome:
        call, limit = exchange.call, exchange.timeout(pacing.clock(), self.timeout)
        headers = {**call.headers, "auth": token}
        try:
            response = session.request(
                call.method, call.url, headers=headers, data=call.body, timeout=(limit, limit), allow_redirects=False
            )
        except requests.exceptions.RequestException as exc:
            return network_failure(exc)
        return answer(response.status_code, response.content, response.headers)

    def _reload(self) -> bool:
        """Re-read the connection after a fresh token was refused; True if it changed."""
        try:
            config = KoreConnectionConfig.load(self.kore_conn_id)
        except KoreError as exc:
            self.log.warning("Could not re-read connection %r after a refused token: %s", self.kore_conn_id, exc)
            return False
        if config == self.config:
            return False
        self.log.info("Connection %r changed since it was read; using the new settings", self.kore_conn_id)
        self.close()
        self.__dict__.update(config=config, signer=JwtSigner(config))
        return True


def _with_ids(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Campaign rows with ``id`` set; a row a moved page boundary repeats is dropped."""
    seen: set[str] = set()
    for row in rows:
        campaign_id = row.get("_id") or row.get("id")
        if not isinstance(campaign_id, str) or not campaign_id:
            raise KoreBadResponseError(f"Kore.ai list campaigns: a row without _id or id: {row.get('name')!r}")
        if campaign_id not in seen:
            seen.add(campaign_id)
            yield {**row, "id": campaign_id}


# What a DAG file gets from `import *`: the classes, not this module's own imports.
__all__ = ["KoreHook"]
