"""``KoreHook``: the sync driver of the request engine over one keep-alive ``requests`` session.

URLs come from :data:`airflow_provider_kore.api.ENDPOINTS`, tokens from
:class:`~airflow_provider_kore.auth.JwtSigner`, and every decision (retry, re-sign, pause, give
up, outcome unknown) from :class:`airflow_provider_kore.engine.Exchange`: this module only
signs, takes its pacing turn, sends, sleeps and hands the answer back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

import requests

from airflow_provider_kore import api, engine, pacing
from airflow_provider_kore._compat import BaseHook
from airflow_provider_kore.auth import JwtSigner
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreError,
    KoreNotFoundError,
    KoreOutcomeUnknownError,
    Secrets,
    redact,
)
from airflow_provider_kore.hooks.pipelines import KorePipelineCalls
from airflow_provider_kore.ids import (
    DEFAULT_CONN_ID,
)

#: A campaign id no one uses: the Test button reads its status to check the credentials.
TEST_CONNECTION_CAMPAIGN_ID = "cd-airflow-connection-test"
#: The Test button waits at most this long in all.
TEST_CONNECTION_DEADLINE = 15.0


def network_failure(exc: requests.exceptions.RequestException) -> engine.NetworkFailure:
    """What a ``requests`` exception says about the request, without its text (it embeds the URL)."""
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        return engine.NetworkFailure(engine.TLS, f"{name}: the TLS handshake failed")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return engine.NetworkFailure(engine.CONNECT, f"{name}: timed out connecting")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return engine.NetworkFailure(engine.TIMEOUT, f"{name}: no answer in time")
    causes: list[Any] = [exc]
    for item in causes:  # walk the chain urllib3 wraps its errors in
        if isinstance(item, NameResolutionError):
            return engine.NetworkFailure(engine.CONNECT, f"{name}: the host name could not be resolved")
        if isinstance(item, NewConnectionError):
            return engine.NetworkFailure(engine.CONNECT, f"{name}: the connection was refused")
        if isinstance(item, BaseException) and len(causes) < 20:
            causes.extend(x for x in (item.__cause__, item.__context__, getattr(item, "reason", None), *item.args) if x)
    return engine.NetworkFailure(engine.DROPPED, f"{name}: the connection was dropped before an answer came")


class KoreHook(KorePipelineCalls, BaseHook):
    """Calls Kore.ai's campaign API with a ``kore`` connection.

    :param kore_conn_id: The ``kore`` connection: host = platform URL, login = Client ID,
        password = Client Secret, extras ``account_id`` (required), ``stream_id``, ``iid``,
        ``timeout``, ``max_retries``, ``jwt_algorithm``, ``jwt_per_request``, ``verify``.
    :param timeout: Seconds per request; overrides the connection's ``timeout`` extra.
    :param max_retries: Retries of a transient failure (5xx, network); overrides the
        connection's ``max_retries``. A 429 is not a failure: the connection pauses and the
        request is sent again after the pause, without using a retry.
    :param deadline: Epoch seconds (``time.time()``) after which a call gives up (a request
        waiting for its turn raises :class:`~airflow_provider_kore.exceptions.KoreRateLimitError`).
        None: each call waits at most :data:`~airflow_provider_kore.pacing.RATE_LIMIT_PATIENCE`
        seconds for its turn.
    """

    conn_name_attr = "kore_conn_id"
    default_conn_name = DEFAULT_CONN_ID
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

    # -- connection form: Airflow 3.0 / 3.1 (3.2+ reads conn-fields from get_provider_info) -----

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields as wtforms fields, built from the provider info's ``conn-fields``."""
        from airflow_provider_kore import connection_form_widgets

        return connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields, from the provider info's ``ui-field-behaviour``."""
        from airflow_provider_kore import ui_field_behaviour

        return ui_field_behaviour()

    # -- connection ---------------------------------------------------------------------------

    @cached_property
    def config(self) -> KoreConnectionConfig:
        """The connection, validated (raises :class:`KoreConfigurationError` naming the field)."""
        return KoreConnectionConfig.load(self.kore_conn_id)

    @property
    def timeout(self) -> float:
        return self._timeout_override if self._timeout_override is not None else self.config.timeout

    @cached_property
    def signer(self) -> JwtSigner:
        config = self.config
        return JwtSigner(
            config.client_id, config.client_secret, algorithm=config.jwt_algorithm, per_request=config.jwt_per_request
        )

    @cached_property
    def pacer(self) -> pacing.SyncPacer:
        """The process's pauses for this connection (after a 429, during an outage)."""
        return pacing.sync_pacer(self.kore_conn_id)

    @cached_property
    def session(self) -> requests.Session:
        """One keep-alive session per hook.

        Proxies and the CA bundle are read from the environment here, once, as requests would for
        the platform URL; ``trust_env`` is then off so requests does not re-read them per call.
        Redirects are never followed (the ``auth`` header would travel to the new host).
        """
        return self._new_session()

    def _new_session(self) -> requests.Session:
        config = self.config
        session = requests.Session()
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

    # -- the campaign calls ---------------------------------------------------------------------

    def get_campaign_status(
        self, campaign_id: str, stream_id: str | None = None, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """The campaign's status: the ``data`` object (``id``, ``status``, ``name``).

        :param deadline: Epoch seconds by which to give up (a sensor's poke passes its own bound).
        """
        call = "get_campaign_status"
        return self._request(call, campaign_id=campaign_id, stream_id=stream_id, deadline=deadline)["data"]

    def get_campaign(self, campaign_id: str, stream_id: str | None = None) -> dict[str, Any]:
        """The campaign's full definition: the ``data`` object."""
        return self._request("get_campaign", campaign_id=campaign_id, stream_id=stream_id)["data"]

    def start_campaign(
        self, campaign_id: str, campaign_type: str = "sms", stream_id: str | None = None
    ) -> dict[str, Any]:
        """Start (``trigger=play``) a campaign; returns Kore's answer (``status``, ``message``, ``updatedAt``).

        Sent again only when Kore's answer proves it did not act (a 429, a 503, a connection that
        never opened). A start whose answer was lost (a 500/502/504, a read timeout, a connection
        dropped after sending) raises :class:`~airflow_provider_kore.exceptions.KoreOutcomeUnknownError`
        naming the status read afterwards: it is never re-sent from here.
        """
        try:
            return self._request(
                "start_campaign", campaign_id=campaign_id, campaign_type=campaign_type, stream_id=stream_id
            )
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
        return self._request(
            "stop_campaign",
            campaign_id=campaign_id,
            campaign_type=campaign_type,
            stream_id=stream_id,
            deadline=deadline,
            priority=priority,
        )

    # -- the Test button ------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated call (a status read of a campaign no one has), as the Test button runs it.

        Kore checks the token before the campaign, so "campaign not found" proves the credentials
        and the stream; any other 404 (an unknown stream, a wrong platform URL) does not.
        """
        try:
            config = self.config
            # The API server builds this hook under a throwaway connection id for every click: a
            # pacer of its own, never registered, so the long-running server does not grow.
            self.__dict__["pacer"] = pacing.SyncPacer(self.kore_conn_id)
            self._request(
                "get_campaign_status",
                campaign_id=TEST_CONNECTION_CAMPAIGN_ID,
                max_retries=1,
                timeout=min(self.timeout, 15.0),
                deadline=time.time() + TEST_CONNECTION_DEADLINE,
            )
        except KoreNotFoundError as err:
            text = (err.kore_message or "").lower()
            unknown_campaign = "campaign" in text and any(w in text for w in ("not found", "does not exist", "no such"))
            if not unknown_campaign or any(w in text for w in ("stream", "bot", "route", "cannot", "path")):
                return False, f"{err}: check the Stream / Bot ID and the platform URL"
        except KoreError as err:
            return False, str(err)
        except Exception as err:  # the Test button must answer, whatever went wrong
            return False, redact(f"{type(err).__name__}: {err}", self._secret_or_none())
        return True, f"Connected to Kore.ai at {config.base_url}: credentials accepted for account {config.account_id}"

    def _secret_or_none(self) -> str | None:
        try:
            return self.config.client_secret
        except KoreError:
            return None

    # -- sending --------------------------------------------------------------------------------

    def _request(
        self,
        operation: str,
        *,
        stream_id: str | None = None,
        body: Mapping[str, Any] | None = None,
        subject: str = "",
        deadline: float | None = None,
        priority: bool = False,
        max_retries: int | None = None,
        timeout: float | None = None,
        **params: object,
    ) -> dict[str, Any]:
        """Prepare, then send until the engine says done (or raise what it says)."""

        def build() -> api.PreparedCall:  # again after a reload: the connection may have changed
            return api.prepare(self.config, operation, stream_id=stream_id, body=body, subject=subject, **params)

        call = build()
        deadline = deadline if deadline is not None else self.deadline
        now = pacing.clock()
        until = now + (deadline - time.time() if deadline is not None else pacing.RATE_LIMIT_PATIENCE)
        if max_retries is None:
            max_retries = self.config.max_retries if self._max_retries_override is None else self._max_retries_override
        exchange = engine.Exchange(
            call,
            secrets=Secrets(self.config.client_secret),
            max_retries=max_retries,
            priority=priority,
            deadline=until,
        )
        # A priority stop may run in on_kill, i.e. a SIGTERM handler interrupting this thread mid-request:
        # it takes no lock the interrupted call could hold (its own session, the pacer's lock-free path).
        session = self._new_session() if priority else self.session
        try:
            return self._exchange(exchange, build, session, until, priority, timeout)
        finally:
            if priority:
                session.close()

    def _exchange(
        self,
        exchange: engine.Exchange,
        build: Callable[[], api.PreparedCall],
        session: requests.Session,
        until: float,
        priority: bool,
        timeout: float | None,
    ) -> dict[str, Any]:
        """Send until the engine says done; raise what it says."""
        call, pacer = exchange.call, self.pacer
        while True:
            token = self.signer.token()
            try:
                sent_at = pacer.acquire_priority() if priority else pacer.acquire(until, sleep=self._sleep)
            except pacing.BudgetExhausted as exc:
                raise exchange.out_of_time(exc.reason) from None
            what: engine.Answer | engine.NetworkFailure
            try:
                response = session.request(
                    call.method,
                    call.url,
                    headers={**call.headers, "auth": token},
                    data=call.body,
                    timeout=(limit := exchange.timeout(pacing.clock(), timeout or self.timeout), limit),
                    allow_redirects=False,
                )
                what = engine.Answer(
                    response.status_code,
                    response.content,
                    response.headers.get("Retry-After"),
                    response.headers.get("Location"),
                )
            except requests.exceptions.RequestException as exc:
                what = network_failure(exc)
            decision = exchange.decide(what, pacing.clock())
            pacer.record(decision.pacing, sent_at, decision.retry_after)
            if (result := decision.final()) is not None:
                return result
            if decision.action == "resign":
                self.signer.invalidate(token)
            elif decision.action == "reload":
                exchange.reloaded(changed := self._reload()).final()
                if changed:  # the rotated connection may name another host, account or secret
                    exchange.call = call = build()
                    exchange.secrets = Secrets(self.config.client_secret)
                    if not priority:
                        session = self.session
            elif decision.action == "retry":
                self.log.warning("%s; retry %d in %.1fs", decision.error, exchange.retries, decision.delay)
                self._sleep(decision.delay)

    def _reload(self) -> bool:
        """Re-read the connection after a fresh token was refused; True if the credentials changed."""
        try:
            config = KoreConnectionConfig.load(self.kore_conn_id)
        except KoreError as exc:
            self.log.warning("Could not re-read connection %r after a refused token: %s", self.kore_conn_id, exc)
            return False
        if config == self.config:
            return False
        self.log.info("Connection %r changed since it was read; using the new settings", self.kore_conn_id)
        self.close()
        self.__dict__["config"] = config
        self.__dict__.pop("signer", None)
        self.__dict__.pop("session", None)
        return True


__all__ = ["KoreHook", "network_failure"]
