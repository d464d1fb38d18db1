"""The async driver of :class:`~airflow_provider_kore.engine.Exchange`: :class:`KoreAsyncClient`, one per event
loop and connection (from :func:`~airflow_provider_kore.shared.shared_client`). It sends, sleeps and coalesces
status reads of one campaign. ``aiohttp`` is imported on first use, never at import."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import _compat, api, engine, pacing
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import KoreConfigurationError, Secrets
from airflow_provider_kore.ids import DEFAULT_CONN_ID
from airflow_provider_kore.shared import Driver, JwtSigner, Outcome, answer, network_failure

if TYPE_CHECKING:
    import aiohttp

CONNECTION_LIMIT = 100  # open connections per session: enough for a busy triggerer, far below Kore's limits
RELOAD_MIN_INTERVAL = 60.0  # a second 401 re-reads the connection (a rotated secret) at most this often
_CACHE_SIZE = 10_000  # prepared requests and latest answers kept per client (cleared when full: flat memory)
_Key = tuple[str, str, str | None, str | None]  # operation, campaign id, stream id, campaign type
_ssl_contexts: dict[str, Any] = {}  # CA bundle path -> SSL context, once per process (~25 ms each)
_sleep = asyncio.sleep  # backoff between retries (tests replace it)


@dataclass(slots=True)
class WaitCounters:
    """What one wait's reads cost: requests sent, reads answered by another's (``coalesced``), 429s."""

    requests: int = 0
    coalesced: int = 0
    rate_limited: int = 0
    seen_at: float = float("-inf")  # pacing-clock send time of the answer it read last


class _LeaderGone(Exception):
    """The read a wait joined was abandoned (cancelled, or out of time); the wait reads itself."""


class KoreAsyncClient(Driver):
    """One ``kore`` connection in one event loop."""

    log = logging.getLogger(__name__)
    session: aiohttp.ClientSession  # once open
    signer: JwtSigner

    def __init__(self, kore_conn_id: str = DEFAULT_CONN_ID) -> None:
        self.kore_conn_id = kore_conn_id
        self._config: KoreConnectionConfig | None = None
        self._prepared: dict[_Key, api.PreparedCall] = {}
        self._open_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[tuple[KoreConnectionConfig, dict[str, Any]]] | None = None
        self._reloaded_at = float("-inf")
        self.users = 0  # holders of shared_client(...) now
        self.pacing = pacing.AsyncPacer(pacing.Budget(kore_conn_id, waits=lambda: self.users))
        # Status reads in flight and the latest answers, by URL (one per stream and campaign).
        self._inflight: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self._answers: dict[str, tuple[float, dict[str, Any]]] = {}
        self.closed = False
        self.connection_lookups = 0

    @property
    def config(self) -> KoreConnectionConfig:
        """The validated connection (once open)."""
        if self._config is None:
            raise RuntimeError("KoreAsyncClient is not open: use `async with shared_client(...)`")
        return self._config

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

        :param max_age: Also accept an answer another caller got less than this many seconds ago (never
            one ``wait`` has already seen).
        :param deadline: Epoch seconds after which no request is worth sending (then ``KoreRateLimitError``).
        :param wait: The calling wait's counters (updated in place).
        :param patient: Ride out an outage: a transient failure pauses the connection and the read is made
            again after the pause, until ``deadline`` (then the last failure is raised).
        """
        key = ("get_campaign_status", campaign_id, stream_id, None)
        url = self._prepare(key).url
        while True:
            fetched_at, data = self._answers.get(url, (float("-inf"), {}))  # a miss: never recent
            if pacing.clock() - fetched_at < max_age and (wait is None or fetched_at > wait.seen_at):
                return self._coalesced(wait, fetched_at, data)
            if (joined := self._inflight.get(url)) is None:
                break  # no read to join: this one leads
            try:  # shielded: one follower cancelled must not cancel the read for the others
                return self._coalesced(wait, *await asyncio.shield(joined))
            except _LeaderGone:
                continue
        shared = self._inflight[url] = asyncio.get_running_loop().create_future()
        try:
            result, sent_at = await self._exchange(key, deadline, wait, patient=patient)
        except BaseException as exc:
            # The reads that joined read for themselves when this one was abandoned (cancelled, or out of its
            # caller's time); otherwise they share its error.
            abandoned = not isinstance(exc, Exception) or getattr(exc, "deadline_reached", False)
            shared.set_exception(_LeaderGone() if abandoned else exc)
            shared.exception()  # retrieved, so asyncio never warns when no one joined
            raise
        finally:
            del self._inflight[url]
        if len(self._answers) >= _CACHE_SIZE:
            self._answers.clear()
        self._answers[url] = (sent_at, result["data"])
        shared.set_result(self._answers[url])
        if wait is not None:
            wait.seen_at = sent_at
        return result["data"]

    def _coalesced(self, wait: WaitCounters | None, fetched_at: float, data: dict[str, Any]) -> dict[str, Any]:
        self.pacing.budget.coalesced += 1
        if wait is not None:
            wait.coalesced += 1
            wait.seen_at = fetched_at
        return data

    async def stop_campaign(
        self,
        campaign_id: str,
        campaign_type: str = "voice",
        stream_id: str | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Stop (``trigger=stop``) a campaign at once, ahead of status reads and of a pause of the connection,
        retried (a 429 or 503 included) until ``deadline`` (epoch seconds); returns Kore's answer."""
        key = ("stop_campaign", campaign_id, stream_id, campaign_type)
        return (await self._exchange(key, deadline, priority=True))[0]

    async def open(self) -> None:
        """Look the connection up and open the session, once for every concurrent first user (``shared_client``)."""
        self._open_task = self._open_task or asyncio.get_running_loop().create_task(self._open())
        await asyncio.shield(self._open_task)

    async def _open(self) -> None:
        config, options = await self._lookup()
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT),
            timeout=aiohttp.ClientTimeout(total=config.timeout),
            headers={"User-Agent": "airflow-provider-kore"},
            trust_env=False,  # proxies are read with the connection; trust_env would read ~/.netrc on every request
        )
        self._use(config, options)

    async def _lookup(self) -> tuple[KoreConnectionConfig, dict[str, Any]]:
        """The connection and its requests' TLS and proxy options (in worker threads: Airflow's lookup and masker
        may block on the supervisor, and a CA bundle is a file)."""
        self.connection_lookups += 1
        config = await _compat.run_sync(KoreConnectionConfig.load, self.kore_conn_id)
        return config, await asyncio.to_thread(_request_options, config)

    def _use(self, config: KoreConnectionConfig, options: dict[str, Any]) -> None:
        self._config = config
        self._options = {"allow_redirects": False, **options}  # every request's, set per connection read
        self.signer = JwtSigner(config)
        self._prepared.clear()
        self.pacing.budget.configure(config.max_requests_per_minute, config.max_requests_per_hour)

    async def aclose(self) -> None:
        """Close the session (the last holder of :func:`shared_client` does)."""
        self.closed = True
        for task in (self._open_task, self._reload_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)  # retrieved: asyncio never warns
        if self._config is not None:
            await self.session.close()

    async def _reload(self, used: KoreConnectionConfig) -> bool:
        """Re-read the connection after a fresh token was refused (one lookup, shared by every request that meets
        the 401, at most once a minute); True if it changed since ``used`` was read."""
        task, now = self._reload_task, time.monotonic()
        if self._config is used and (task is None or (task.done() and now - self._reloaded_at >= RELOAD_MIN_INTERVAL)):
            self._reloaded_at = now
            task = self._reload_task = asyncio.get_running_loop().create_task(self._lookup())
        if task is not None and self._config is used:
            try:
                config, options = await asyncio.shield(task)
            except Exception as exc:
                self.log.warning("Could not re-read connection %r after a refused token: %s", self.kore_conn_id, exc)
                return False
            if config != used and self._config is used:
                self.log.info("Connection %r changed since it was read; using the new settings", self.kore_conn_id)
                self._use(config, options)
        return self._config is not used

    def _prepare(self, key: _Key) -> api.PreparedCall:
        """The call a :data:`_Key` names, prepared once."""
        if (prepared := self._prepared.get(key)) is None:
            operation, campaign_id, stream_id, kind = key
            if len(self._prepared) >= _CACHE_SIZE:
                self._prepared.clear()
            prepared = self._prepared[key] = api.prepare(
                self.config, operation, stream_id=stream_id, campaign_id=campaign_id, campaign_type=kind
            )
        return prepared

    async def _exchange(
        self, key: _Key, deadline: float | None, wait: WaitCounters | None = None, **flags: Any
    ) -> tuple[dict[str, Any], float]:
        """Send the call ``key`` names until the engine says done (``flags``: ``patient``, ``priority``, see
        :class:`~airflow_provider_kore.engine.Exchange`); return (parsed answer, pacing-clock send time)."""
        config = self.config
        until = None if deadline is None else pacing.clock() + (deadline - time.time())
        call, secrets = self._prepare(key), Secrets(config.client_secret)
        exchange = engine.Exchange(call, secrets=secrets, max_retries=config.max_retries, deadline=until, **flags)
        while True:
            try:
                sent_at = await self.pacing.acquire(until, priority=exchange.priority)
            except pacing.BudgetExhausted as exc:
                raise exchange.out_of_time(exc.reason) from None
            token = self.signer.token()  # after the turn: a wait for it (a 429 pause) may outlast a cached token
            what = await self._send(exchange, token)
            decision = self._decided(exchange, what, sent_at, token, self.pacing)
            if wait is not None:
                wait.requests += 1
                wait.rate_limited += decision.pacing == "rate_limited"
            if (result := decision.final()) is not None:
                return result, sent_at
            if decision.action == "reload":
                exchange.reloaded(await self._reload(config)).final()  # the 401 stands unless it changed
                exchange.call, exchange.secrets = self._prepare(key), Secrets(self.config.client_secret)
            elif decision.action == "retry":
                await _sleep(decision.delay)

    async def _send(self, exchange: engine.Exchange, token: str) -> Outcome:
        import aiohttp

        call, limit = exchange.call, aiohttp.ClientTimeout(total=exchange.timeout(pacing.clock(), self.config.timeout))
        headers = {**call.headers, "auth": token}
        try:
            async with self.session.request(
                call.method, call.url, headers=headers, data=call.body, timeout=limit, **self._options
            ) as response:
                return answer(response.status, await response.read(), response.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return network_failure(exc)


def _request_options(config: KoreConnectionConfig) -> dict[str, Any]:
    """TLS verification and proxy for the connection's requests (file reads: run in a thread, per connection read)."""
    import ssl

    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    verify: Any = config.tls_verify()  # True: aiohttp's default context, built once per process
    if isinstance(verify, str):
        if verify not in _ssl_contexts:
            try:
                _ssl_contexts[verify] = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise KoreConfigurationError(
                    f"the CA bundle {verify!r} (extra verify, else REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE) "
                    f"cannot be loaded ({type(exc).__name__})"
                ) from None
        verify = _ssl_contexts[verify]
    # Proxies as requests finds them (HTTPS_PROXY, NO_PROXY, ...), so the triggerer and workers agree.
    try:
        proxy, proxy_auth = get_env_proxy_for_url(URL(config.base_url))
    except LookupError:
        return {"ssl": verify}
    return {"ssl": verify, "proxy": proxy, "proxy_auth": proxy_auth}
