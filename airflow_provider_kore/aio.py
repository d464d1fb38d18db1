"""The async driver of the request engine: one :class:`KoreAsyncClient` per event loop and connection.

Every decision comes from :class:`airflow_provider_kore.engine.Exchange`; this module only sends,
sleeps, and coalesces status reads of one campaign (a read joins one in flight, or reuses a recent
answer). :mod:`airflow_provider_kore.shared` shares a client between the triggers of a loop.
``aiohttp`` is imported on first use, never at import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_kore import _compat, api, engine, pacing
from airflow_provider_kore.auth import JwtSigner
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import KoreConfigurationError, Secrets
from airflow_provider_kore.ids import DEFAULT_CONN_ID

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Open connections per shared session: enough for a busy triggerer, far below Kore's limits.
CONNECTION_LIMIT = 100
#: A second 401 re-reads the connection (a rotated secret) at most this often per client.
RELOAD_MIN_INTERVAL = 60.0
#: Prepared requests and latest status answers kept per client (cleared when full: flat memory).
_CACHE_SIZE = 10_000
_ssl_contexts: dict[str, Any] = {}  # CA bundle path -> SSL context, once per process (~25 ms each)


async def _sleep(seconds: float) -> None:
    """Backoff between retries (a seam for tests)."""
    await asyncio.sleep(seconds)


class WaitCounters:
    """What one wait's reads cost: requests sent, reads answered by another's (``coalesced``), 429s."""

    __slots__ = ("coalesced", "rate_limited", "requests", "seen_at")

    def __init__(self) -> None:
        self.requests = self.coalesced = self.rate_limited = 0
        self.seen_at = float("-inf")  # pacing-clock send time of the answer it read last


def _opened(value: T | None) -> T:
    if value is None:
        raise RuntimeError("KoreAsyncClient is not open: use `async with shared_client(...)`")
    return value


class _LeaderGone(Exception):
    """The read a wait joined was abandoned (cancelled, or out of time); the wait reads itself."""


class KoreAsyncClient:
    """One ``kore`` connection in one event loop (get it from :func:`~.shared.shared_client`)."""

    def __init__(self, kore_conn_id: str = DEFAULT_CONN_ID) -> None:
        self.kore_conn_id = kore_conn_id
        self._config: KoreConnectionConfig | None = None
        self._signer: JwtSigner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._proxy: dict[str, Any] = {}  # proxy and proxy_auth, read once from the environment
        self._prepared: dict[tuple[str, str, str | None, str | None], api.PreparedCall] = {}
        self._open_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[KoreConnectionConfig] | None = None
        self._reloaded_at = float("-inf")
        #: How many holders of :func:`shared_client` share this client now.
        self.users = 0
        self.pacing = pacing.AsyncPacer(pacing.Budget(kore_conn_id, waits=lambda: self.users))
        # Status reads in flight and the latest answers, by URL (one per stream and campaign).
        self._inflight: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self._answers: dict[str, tuple[float, dict[str, Any]]] = {}
        self.closed = False
        # Counters: requests on the wire, retries, 429s, re-signed tokens, connection lookups.
        self.requests_sent = self.retries = self.rate_limited = self.auth_refreshes = self.connection_lookups = 0

    def __repr__(self) -> str:
        return f"KoreAsyncClient(kore_conn_id={self.kore_conn_id!r}, users={self.users}, closed={self.closed})"

    @property
    def config(self) -> KoreConnectionConfig:
        """The validated connection (once the client is open)."""
        return _opened(self._config)

    @property
    def signer(self) -> JwtSigner:
        """The JWT signer every request of this client shares."""
        return _opened(self._signer)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared ``aiohttp`` session (one keep-alive pool)."""
        return _opened(self._session)

    async def get_campaign_status(
        self,
        campaign_id: str,
        stream_id: str | None = None,
        *,
        max_age: float = 0.0,
        deadline: float | None = None,
        wait: WaitCounters | None = None,
        patient: bool = False,
    ) -> dict[str, Any]:
        """The campaign's status ``data``; a read joins one of the same campaign already in flight.

        :param max_age: Also accept an answer another caller got less than this many seconds
            ago (never one ``wait`` has already seen).
        :param deadline: Epoch seconds after which no request is worth sending: with no turn
            before it, :class:`~airflow_provider_kore.exceptions.KoreRateLimitError` is raised.
        :param wait: The calling wait's counters (updated in place).
        :param patient: Ride out an outage: a transient failure pauses the connection and the
            read is made again after the pause, until ``deadline`` (then the last failure is raised).
        """
        prepared = self._prepare("get_campaign_status", campaign_id, stream_id, None)
        key = prepared.url
        while True:
            if max_age > 0:
                cached = self._answers.get(key)
                if cached is not None:
                    fetched_at, data = cached
                    if pacing.clock() - fetched_at < max_age and (wait is None or fetched_at > wait.seen_at):
                        self._shared_answer(wait, fetched_at)
                        return data
            shared = self._inflight.get(key)
            if shared is None:
                return await self._lead_status_read(key, campaign_id, stream_id, deadline, wait, patient)
            try:
                # Shielded: one follower being cancelled must not cancel the read for the others.
                fetched_at, data = await asyncio.shield(shared)
            except _LeaderGone:
                continue
            self._shared_answer(wait, fetched_at)
            return data

    def _shared_answer(self, wait: WaitCounters | None, fetched_at: float) -> None:
        self.pacing.budget.coalesced += 1
        if wait is not None:
            wait.coalesced += 1
            wait.seen_at = fetched_at

    async def _lead_status_read(
        self,
        key: str,
        campaign_id: str,
        stream_id: str | None,
        deadline: float | None,
        wait: WaitCounters | None,
        patient: bool,
    ) -> dict[str, Any]:
        shared: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = shared
        try:
            answer, sent_at = await self._exchange(
                "get_campaign_status", campaign_id, stream_id, None, deadline, wait, patient=patient
            )
        except BaseException as exc:
            # Followers read for themselves when this read was abandoned (cancelled, or out of its
            # caller's time); otherwise they share its error.
            abandoned = not isinstance(exc, Exception) or getattr(exc, "deadline_reached", False)
            shared.set_exception(_LeaderGone() if abandoned else exc)
            shared.exception()  # retrieved, so asyncio never warns when no one joined
            raise
        finally:
            if self._inflight.get(key) is shared:
                del self._inflight[key]
        data: dict[str, Any] = answer["data"]
        if len(self._answers) >= _CACHE_SIZE:
            self._answers.clear()
        self._answers[key] = (sent_at, data)
        shared.set_result((sent_at, data))
        if wait is not None:
            wait.seen_at = sent_at
        return data

    async def stop_campaign(
        self,
        campaign_id: str,
        campaign_type: str = "voice",
        stream_id: str | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Stop (``trigger=stop``) a campaign at once; returns Kore's answer (``status``, ``message``, ...).

        A stop outranks status reads: it does not queue behind them or a pause of the connection,
        and is retried (a 429 or 503 included) until ``deadline`` (epoch seconds).
        """
        answer, _ = await self._exchange(
            "stop_campaign", campaign_id, stream_id, campaign_type, deadline, None, priority=True
        )
        return answer

    async def _ensure_open(self) -> None:
        if self._session is None:
            # One task (shielded) for every concurrent first user: one lookup, one session.
            self._open_task = self._open_task or asyncio.get_running_loop().create_task(self._open())
            await asyncio.shield(self._open_task)

    async def _open(self) -> None:
        try:
            config = await self._lookup()
            ssl, self._proxy = await asyncio.to_thread(_environment_settings, config)
            import aiohttp

            self._set_config(config)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT, ssl=ssl),
                timeout=aiohttp.ClientTimeout(total=config.timeout),
                headers={"User-Agent": "airflow-provider-kore"},
                # Proxies are read once above; trust_env would read ~/.netrc on every request.
                trust_env=False,
            )
        except BaseException:
            self._open_task = None  # a later user starts afresh (the connection may be fixed by then)
            raise

    async def _lookup(self) -> KoreConnectionConfig:
        self.connection_lookups += 1
        # In a worker thread: Airflow's lookup and masker may block on the supervisor.
        return await _compat.run_sync(KoreConnectionConfig.load, self.kore_conn_id)

    def _set_config(self, config: KoreConnectionConfig) -> None:
        self._config = config
        self._signer = JwtSigner(
            config.client_id, config.client_secret, algorithm=config.jwt_algorithm, per_request=config.jwt_per_request
        )
        self._prepared.clear()
        self.pacing.budget.configure(config.max_requests_per_minute, config.max_requests_per_hour)

    async def aclose(self) -> None:
        """Close the session. :func:`shared_client` calls this when its last user is done."""
        self.closed = True
        for task in (self._open_task, self._reload_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # retrieved: asyncio never warns
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _reload_credentials(self, used: KoreConnectionConfig) -> bool:
        """Re-read the connection after a fresh token was refused; True if the credentials changed.

        One lookup, shared by every request that meets the 401, at most once a minute.
        """
        task, now = self._reload_task, time.monotonic()
        if self._config is used and (task is None or (task.done() and now - self._reloaded_at >= RELOAD_MIN_INTERVAL)):
            self._reloaded_at = now
            task = self._reload_task = asyncio.get_running_loop().create_task(self._lookup())
        if task is not None and self._config is used:
            try:
                config = await asyncio.shield(task)
            except Exception as exc:
                log.warning("Could not re-read connection %r after a refused token: %s", self.kore_conn_id, exc)
                return False
            if config != used and self._config is used:
                log.info("Connection %r changed since it was read; using the new settings", self.kore_conn_id)
                self._set_config(config)
        return self._config is not used

    def _prepare(
        self, operation: str, campaign_id: str, stream_id: str | None, campaign_type: str | None
    ) -> api.PreparedCall:
        key = (operation, campaign_id, stream_id, campaign_type)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = api.prepare(
                self.config, operation, stream_id=stream_id, campaign_id=campaign_id, campaign_type=campaign_type
            )
            if len(self._prepared) >= _CACHE_SIZE:
                self._prepared.clear()
            self._prepared[key] = prepared
        return prepared

    async def _exchange(
        self,
        operation: str,
        campaign_id: str,
        stream_id: str | None,
        campaign_type: str | None,
        deadline: float | None,
        wait: WaitCounters | None,
        *,
        patient: bool = False,
        priority: bool = False,
    ) -> tuple[dict[str, Any], float]:
        """Send until the engine says done; return (parsed answer, pacing-clock send time)."""
        import aiohttp

        config = self.config
        call = self._prepare(operation, campaign_id, stream_id, campaign_type)
        until = None if deadline is None else pacing.clock() + (deadline - time.time())
        secrets, retries = Secrets(config.client_secret), config.max_retries
        exchange = engine.Exchange(
            call, secrets=secrets, max_retries=retries, patient=patient, priority=priority, deadline=until
        )
        pacer, counters = self.pacing, wait or WaitCounters()
        while True:
            token = self.signer.token()
            try:
                sent_at = await pacer.acquire(until, priority=priority)
            except pacing.BudgetExhausted as exc:
                raise exchange.out_of_time(exc.reason) from None
            self.requests_sent += 1
            counters.requests += 1
            what: engine.Answer | engine.NetworkFailure
            try:
                async with self.session.request(
                    call.method,
                    call.url,
                    headers={**call.headers, "auth": token},
                    data=call.body,
                    **self._proxy,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=exchange.timeout(pacing.clock(), config.timeout)),
                ) as response:
                    body = await response.read()
                    what = engine.Answer(
                        response.status, body, response.headers.get("Retry-After"), response.headers.get("Location")
                    )
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                what = network_failure(exc)
            decision = exchange.decide(what, pacing.clock())
            pacer.record(decision.pacing, sent_at, decision.retry_after)
            if decision.pacing == "rate_limited":
                self.rate_limited += 1
                counters.rate_limited += 1
            if (result := decision.final()) is not None:
                return result, sent_at
            if decision.action == "resign":
                self.auth_refreshes += 1
                self.signer.invalidate(token)
            elif decision.action == "reload":
                exchange.reloaded(await self._reload_credentials(config)).final()
                config = self.config
                exchange.call = call = self._prepare(operation, campaign_id, stream_id, campaign_type)
                exchange.secrets = Secrets(config.client_secret)
            elif decision.action == "retry":
                self.retries += 1
                log.warning("%s; retry %d in %.1fs", decision.error, exchange.retries, decision.delay)
                await _sleep(decision.delay)


def network_failure(exc: BaseException) -> engine.NetworkFailure:
    """What an ``aiohttp`` exception says about the request, without its text (it names the URL)."""
    import socket
    import ssl

    import aiohttp

    name = type(exc).__name__
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return engine.NetworkFailure(engine.TLS, f"{name}: the TLS handshake failed")
    if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())):  # aiohttp 3.10+
        return engine.NetworkFailure(engine.CONNECT, f"{name}: timed out connecting")
    if isinstance(exc, asyncio.TimeoutError):
        return engine.NetworkFailure(engine.TIMEOUT, f"{name}: no complete answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, socket.gaierror):
            return engine.NetworkFailure(engine.CONNECT, f"{name}: the host name could not be resolved")
        return engine.NetworkFailure(engine.CONNECT, f"{name}: the connection was refused")
    return engine.NetworkFailure(engine.DROPPED, f"{name}: the connection was dropped before a complete answer came")


def _environment_settings(config: KoreConnectionConfig) -> tuple[Any, dict[str, Any]]:
    """TLS verification and proxy for the session (file reads: run in a thread, once per client)."""
    import ssl

    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    verify: Any = config.verify  # True: aiohttp's default context, built once per process
    if isinstance(verify, str):
        if verify not in _ssl_contexts:
            try:
                _ssl_contexts[verify] = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise KoreConfigurationError(
                    f"extra verify names a CA bundle that cannot be loaded: {verify!r} ({type(exc).__name__})"
                ) from None
        verify = _ssl_contexts[verify]
    # Proxies as requests finds them (HTTPS_PROXY, NO_PROXY, ...), so the triggerer and workers agree.
    try:
        proxy, proxy_auth = get_env_proxy_for_url(URL(config.base_url))
    except LookupError:
        return verify, {}
    return verify, {"proxy": proxy, "proxy_auth": proxy_auth}
