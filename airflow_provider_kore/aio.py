"""The async driver of the request engine, shared per event loop and connection.

A triggerer runs hundreds of triggers in one event loop; through :func:`shared_client` they all
use one :class:`KoreAsyncClient` per connection: one lookup, one ``aiohttp`` session, one JWT,
one :class:`~airflow_provider_kore.pacing.AsyncPacer` (budget, 429 and outage pauses). Every
decision comes from :class:`airflow_provider_kore.engine.Exchange`; this module sends, sleeps and
coalesces status reads of one campaign (a read joins one in flight, or reuses a recent answer)::

    async with shared_client("kore_default") as client:
        data = await client.get_campaign_status("cd-voice-renewal-0001")

``aiohttp`` is imported on first use, never at import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import _compat, api, engine, pacing
from airflow_provider_kore.auth import JwtSigner
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreConfigurationError,
    KoreError,
    Secrets,
)
from airflow_provider_kore.ids import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from types import TracebackType

    import aiohttp

log = logging.getLogger(__name__)

#: Open connections per shared session: enough for a busy triggerer, far below Kore's limits.
CONNECTION_LIMIT = 100
#: A 401 after a fresh token re-reads the connection (the secret may have been rotated), at
#: most this often, so a thousand triggers with a wrong secret cause one lookup, not a thousand.
RELOAD_MIN_INTERVAL = 60.0
#: Prepared requests kept per client; a triggerer waits on far fewer campaigns than this.
_PREPARED_CACHE_SIZE = 10_000
#: Latest status answers kept per client, for coalescing.
_ANSWER_CACHE_SIZE = 10_000
_USER_AGENT = "airflow-provider-kore"

# SSL contexts built from a CA bundle path, once per process (loading a bundle costs ~25 ms).
_ssl_contexts: dict[str, Any] = {}


async def _sleep(seconds: float) -> None:
    """Backoff between retries (a seam for tests)."""
    await asyncio.sleep(seconds)


class WaitCounters:
    """What one wait's status reads cost; the trigger passes one to every read it makes.

    ``requests``: requests its reads put on the wire (retries included); ``coalesced``: reads
    answered by another wait's request (in flight, or answered less than ``max_age`` ago);
    ``rate_limited``: 429 answers to its requests.
    """

    __slots__ = ("coalesced", "rate_limited", "requests", "seen_at")

    def __init__(self) -> None:
        self.requests = 0
        self.coalesced = 0
        self.rate_limited = 0
        #: Pacing-clock send time of the answer this wait read last (a wait never re-reads it).
        self.seen_at = float("-inf")


class _LeaderGone(Exception):
    """The read a wait joined was abandoned (cancelled, or out of time); the wait reads itself."""


class KoreAsyncClient:
    """One ``kore`` connection in one event loop: config, ``aiohttp`` session, JWT signer, counters.

    Get it from :func:`shared_client` rather than building it: the registry shares it between
    every trigger of the loop and closes it when the last one is done.

    :param kore_conn_id: The ``kore`` connection to read (once) and call Kore.ai with.
    """

    def __init__(self, kore_conn_id: str = DEFAULT_CONN_ID) -> None:
        self.kore_conn_id = kore_conn_id
        self._config: KoreConnectionConfig | None = None
        self._signer: JwtSigner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._proxy: Any = None
        self._proxy_auth: Any = None
        self._prepared: dict[tuple[str, str, str | None, str | None], api.PreparedCall] = {}
        self._open_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[bool] | None = None
        self._reloaded_at = float("-inf")
        self._users = 0
        self._key: tuple[asyncio.AbstractEventLoop, str] | None = None
        #: Turns for every request of this client: the connection's budget and 429 pauses.
        self.pacing = pacing.AsyncPacer(pacing.Budget(kore_conn_id, waits=lambda: self._users))
        # Status reads in flight and the latest answers, by URL (one per stream and campaign).
        self._inflight: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self._answers: dict[str, tuple[float, dict[str, Any]]] = {}
        self.closed = False
        #: Requests put on the wire (every attempt counts).
        self.requests_sent = 0
        #: Attempts repeated after a network failure or a retryable status.
        self.retries = 0
        #: ``429 Too Many Requests`` answers received (each re-queued behind the pause, never a retry).
        self.rate_limited = 0
        #: Tokens thrown away after a ``401`` and signed again.
        self.auth_refreshes = 0
        #: Connection lookups made (the first one, plus re-reads after a refused fresh token).
        self.connection_lookups = 0

    def __repr__(self) -> str:
        return f"KoreAsyncClient(kore_conn_id={self.kore_conn_id!r}, users={self._users}, closed={self.closed})"

    # -- state --------------------------------------------------------------------------------

    @property
    def config(self) -> KoreConnectionConfig:
        """The validated connection (available once the client is open)."""
        if self._config is None:
            raise RuntimeError("KoreAsyncClient is not open: use `async with shared_client(...)`")
        return self._config

    @property
    def signer(self) -> JwtSigner:
        """The JWT signer every request of this client shares."""
        if self._signer is None:
            raise RuntimeError("KoreAsyncClient is not open: use `async with shared_client(...)`")
        return self._signer

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared ``aiohttp`` session (one keep-alive pool)."""
        if self._session is None:
            raise RuntimeError("KoreAsyncClient is not open: use `async with shared_client(...)`")
        return self._session

    @property
    def users(self) -> int:
        """How many holders of :func:`shared_client` currently share this client."""
        return self._users

    # -- the operations -----------------------------------------------------------------------

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
        """The campaign's status: the ``data`` object (``id``, ``status``, ``name``).

        A read of a campaign that another caller of this client is already reading joins that
        request instead of sending its own.

        :param max_age: Also accept an answer another caller got less than this many seconds
            ago (never one ``wait`` has already seen).
        :param deadline: Epoch seconds (``time.time()``) after which no request is worth
            sending: if Kore's rate limit or the connection's budget leaves no turn before it,
            :class:`~airflow_provider_kore.exceptions.KoreRateLimitError` is raised. None:
            wait for a turn however long it takes. A 429 is never raised otherwise.
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
            if self._inflight.get(key) is shared:
                del self._inflight[key]
            # Followers read for themselves when this read was abandoned; otherwise they share its error.
            abandoned = not isinstance(exc, Exception) or isinstance(exc, _OutOfTime)
            shared.set_exception(_LeaderGone() if abandoned else exc)
            shared.exception()  # retrieved, so asyncio never warns when no one joined
            if isinstance(exc, _OutOfTime):
                raise exc.error from None
            raise
        data: dict[str, Any] = answer["data"]
        if len(self._answers) >= _ANSWER_CACHE_SIZE:
            self._answers.clear()
        self._answers[key] = (sent_at, data)
        if self._inflight.get(key) is shared:
            del self._inflight[key]
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
        try:
            answer, _ = await self._exchange(
                "stop_campaign", campaign_id, stream_id, campaign_type, deadline, None, priority=True
            )
        except _OutOfTime as exc:
            raise exc.error from None
        return answer

    # -- opening and closing ------------------------------------------------------------------

    async def _ensure_open(self) -> None:
        if self._session is not None:
            return
        if self._open_task is None:
            # One task for every concurrent first user: one lookup, one session.
            self._open_task = asyncio.get_running_loop().create_task(self._open())
        # Shielded: one waiter being cancelled must not cancel the others' open.
        await asyncio.shield(self._open_task)

    async def _open(self) -> None:
        try:
            config = await self._lookup()
            ssl, proxy, proxy_auth = await asyncio.to_thread(_environment_settings, config)
            import aiohttp

            self._set_config(config)
            self._proxy, self._proxy_auth = proxy, proxy_auth
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT, ssl=ssl),
                timeout=aiohttp.ClientTimeout(total=config.timeout),
                headers={"User-Agent": _USER_AGENT},
                # Proxies are read once above; trust_env would read ~/.netrc on every request.
                trust_env=False,
            )
        except BaseException:
            # Later users start afresh (the connection may be fixed by then).
            _forget(self)
            raise

    async def _lookup(self) -> KoreConnectionConfig:
        self.connection_lookups += 1
        # In a worker thread: Airflow's lookup and masker may block on the supervisor.
        return await _compat.run_sync(KoreConnectionConfig.load, self.kore_conn_id)

    def _set_config(self, config: KoreConnectionConfig) -> None:
        self._config = config
        self._signer = JwtSigner(
            config.client_id,
            config.client_secret,
            algorithm=config.jwt_algorithm,
            per_request=config.jwt_per_request,
        )
        self._prepared.clear()
        self.pacing.budget.configure(config.max_requests_per_minute, config.max_requests_per_hour)

    async def aclose(self) -> None:
        """Close the session. :func:`shared_client` calls this when its last user is done."""
        self.closed = True
        for task in (self._open_task, self._reload_task):
            if task is not None and not task.done():
                task.cancel()
            if task is not None:
                # Retrieve the outcome so asyncio never logs "exception was never retrieved".
                await asyncio.gather(task, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _reload_credentials(self, used: KoreConnectionConfig) -> bool:
        """Re-read the connection after a fresh token was refused; True if the credentials changed."""
        if self._config is not used:  # another request already re-read it
            return True
        if self._reload_task is None or (
            self._reload_task.done() and time.monotonic() - self._reloaded_at >= RELOAD_MIN_INTERVAL
        ):
            self._reloaded_at = time.monotonic()
            self._reload_task = asyncio.get_running_loop().create_task(self._reload(used))
        try:
            await asyncio.shield(self._reload_task)
        except asyncio.CancelledError:
            raise
        except Exception:  # _reload logs its own failure
            return False
        return self._config is not used

    async def _reload(self, used: KoreConnectionConfig) -> bool:
        try:
            config = await self._lookup()
        except Exception as exc:
            log.warning("Could not re-read connection %r after a refused token: %s", self.kore_conn_id, exc)
            return False
        if config == used:
            return False
        log.info("Connection %r changed since it was read; using the new settings", self.kore_conn_id)
        self._set_config(config)
        return True

    # -- sending ------------------------------------------------------------------------------

    def _prepare(
        self, operation: str, campaign_id: str, stream_id: str | None, campaign_type: str | None
    ) -> api.PreparedCall:
        key = (operation, campaign_id, stream_id, campaign_type)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = api.prepare(
                self.config, operation, stream_id=stream_id, campaign_id=campaign_id, campaign_type=campaign_type
            )
            if len(self._prepared) >= _PREPARED_CACHE_SIZE:
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
        exchange = engine.Exchange(
            call,
            secrets=Secrets(config.client_secret),
            max_retries=config.max_retries,
            patient=patient,
            priority=priority,
            deadline=until,
        )
        pacer = self.pacing
        while True:
            token = self.signer.token()
            try:
                sent_at = await pacer.acquire(until, priority=priority)
            except pacing.BudgetExhausted as exc:
                raise _OutOfTime(exchange.out_of_time(exc.reason)) from None
            self.requests_sent += 1
            if wait is not None:
                wait.requests += 1
            what: engine.Answer | engine.NetworkFailure
            try:
                async with self.session.request(
                    call.method,
                    call.url,
                    headers={**call.headers, "auth": token},
                    data=call.body,
                    proxy=self._proxy,
                    proxy_auth=self._proxy_auth,
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
                if wait is not None:
                    wait.rate_limited += 1
            if decision.action == "done":
                assert decision.result is not None
                return decision.result, sent_at
            if decision.action in ("fail", "unknown"):
                assert decision.error is not None
                raise decision.error
            if decision.action == "resign":
                self.auth_refreshes += 1
                self.signer.invalidate(token)
            elif decision.action == "reload":
                decision = exchange.reloaded(await self._reload_credentials(config))
                if decision.action == "fail":
                    assert decision.error is not None
                    raise decision.error
                config = self.config
                exchange.call = call = self._prepare(operation, campaign_id, stream_id, campaign_type)
                exchange.secrets = Secrets(config.client_secret)
            elif decision.action == "retry":
                self.retries += 1
                log.warning("%s; retry %d in %.1fs", decision.error, exchange.retries, decision.delay)
                await _sleep(decision.delay)


class _OutOfTime(Exception):
    """No turn before the caller's deadline; carries the error the engine chose."""

    def __init__(self, error: KoreError) -> None:
        super().__init__(str(error))
        self.error = error


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


def _environment_settings(config: KoreConnectionConfig) -> tuple[Any, Any, Any]:
    """TLS verification and proxy for the session (file reads: run in a thread, once per client)."""
    import ssl

    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    verify: Any
    if config.verify is False:
        verify = False
    elif config.verify is True:
        verify = True  # aiohttp's default context, built once per process when aiohttp is imported
    else:
        verify = _ssl_contexts.get(config.verify)
        if verify is None:
            try:
                verify = ssl.create_default_context(cafile=config.verify)
            except (OSError, ssl.SSLError) as exc:
                raise KoreConfigurationError(
                    f"connection extra verify names a CA bundle that cannot be loaded: {config.verify!r} "
                    f"({type(exc).__name__})"
                ) from None
            _ssl_contexts[config.verify] = verify
    # Proxies as requests finds them (HTTPS_PROXY, NO_PROXY, ...), so the triggerer and workers agree.
    try:
        proxy, proxy_auth = get_env_proxy_for_url(URL(config.base_url))
    except LookupError:
        proxy, proxy_auth = None, None
    return verify, proxy, proxy_auth


# ---------------------------------------------------------------------------------------------
# The registry: one client per (event loop, connection id).

_registry: dict[tuple[asyncio.AbstractEventLoop, str], KoreAsyncClient] = {}


def _forget(client: KoreAsyncClient) -> None:
    if client._key is not None and _registry.get(client._key) is client:
        del _registry[client._key]


async def _acquire(kore_conn_id: str) -> KoreAsyncClient:
    key = (asyncio.get_running_loop(), kore_conn_id)
    client = _registry.get(key)
    if client is None:
        client = KoreAsyncClient(kore_conn_id)
        client._key = key
        _registry[key] = client
    client._users += 1
    try:
        await client._ensure_open()
    except BaseException:
        await _release(client)
        raise
    return client


async def _release(client: KoreAsyncClient) -> None:
    client._users -= 1
    if client._users > 0:
        return
    _forget(client)  # at once, so a new user from here on builds a fresh client
    # Shielded so the close finishes even when the releasing trigger is being cancelled.
    await asyncio.shield(client.aclose())


class SharedClient:
    """``async with shared_client(conn_id) as client``: hold the loop's shared client, then let go.

    Leaving the block (normally, by an exception, or by cancellation) releases the hold; the
    last holder closes the session. :meth:`release` may be called again safely.
    """

    def __init__(self, kore_conn_id: str = DEFAULT_CONN_ID) -> None:
        self.kore_conn_id = kore_conn_id
        self.client: KoreAsyncClient | None = None

    async def __aenter__(self) -> KoreAsyncClient:
        if self.client is not None:
            raise RuntimeError("this SharedClient is already held; use a new shared_client(...)")
        self.client = await _acquire(self.kore_conn_id)
        return self.client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    async def release(self) -> None:
        """Let go of the client (once; later calls do nothing)."""
        client, self.client = self.client, None
        if client is not None:
            await _release(client)


def shared_client(kore_conn_id: str = DEFAULT_CONN_ID) -> SharedClient:
    """The running loop's :class:`KoreAsyncClient` for ``kore_conn_id``, as an async context manager."""
    return SharedClient(kore_conn_id)


def active_clients() -> list[KoreAsyncClient]:
    """Clients currently registered, in every loop (for tests and benchmarks)."""
    return list(_registry.values())


def reset_shared_clients() -> None:
    """Forget every registered client without closing it (tests: between event loops)."""
    _registry.clear()


__all__ = [
    "CONNECTION_LIMIT",
    "KoreAsyncClient",
    "SharedClient",
    "WaitCounters",
    "active_clients",
    "reset_shared_clients",
    "shared_client",
]
