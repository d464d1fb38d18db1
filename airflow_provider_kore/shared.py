"""What the two drivers of :class:`~airflow_provider_kore.engine.Exchange` share (``hooks/kore.py`` over
``requests``, ``aio.py`` over ``aiohttp``), and the registry that gives the triggers of an event loop one
:class:`~airflow_provider_kore.aio.KoreAsyncClient` per connection (one lookup, session, JWT and pacer)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import engine, pacing
from airflow_provider_kore.ids import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow_provider_kore.aio import KoreAsyncClient
    from airflow_provider_kore.config import KoreConnectionConfig

TOKEN_LIFETIME = 300  # Kore asks for a short one; five minutes covers a slow request
REFRESH_MARGIN = 60.0  # a token is signed anew this long before it expires, so it never expires in flight

#: A network failure by the class names in its exception or in those it wraps (requests, urllib3, aiohttp, ssl,
#: asyncio), first match wins; TLS only by the exception itself (a TLS error aiohttp wraps came mid-answer: the
#: connection dropped), and never when the server closed the TLS connection (requests raises the same SSLError
#: for a stale keep-alive connection or a load balancer without a backend as for a failed handshake). Only the
#: class name is kept: the exception's text names the URL.
_FAILURES = (
    (engine.DROPPED, {"SSLEOFError", "SSLZeroReturnError"}, "the TLS connection was closed before an answer came"),
    (engine.TLS, {"SSLError", "ClientSSLError"}, "the TLS handshake failed"),
    (engine.CONNECT, {"ConnectTimeout", "ConnectionTimeoutError"}, "timed out connecting"),
    (engine.CONNECT, {"NameResolutionError", "gaierror"}, "the host name could not be resolved"),
    (engine.CONNECT, {"NewConnectionError", "ClientConnectorError"}, "the connection was refused"),
    (engine.TIMEOUT, {"ReadTimeout", "TimeoutError"}, "no answer in time"),
    (engine.DROPPED, {"BaseException"}, "the connection was dropped before an answer came"),
)


def network_failure(exc: BaseException) -> engine.NetworkFailure:
    """What a ``requests`` or ``aiohttp`` exception says about the request."""
    chain = [exc]
    for item in chain:
        if len(chain) < 20:
            wrapped = (item.__cause__, item.__context__, getattr(item, "reason", None), *item.args)
            chain += [x for x in wrapped if isinstance(x, BaseException)]
    names = {cls.__name__ for item in chain for cls in type(item).__mro__}
    outer = {cls.__name__ for cls in type(exc).__mro__}
    kind, detail = next((k, d) for k, found, d in _FAILURES if found & (outer if k == engine.TLS else names))
    return engine.NetworkFailure(kind, f"{type(exc).__name__}: {detail}")


Outcome = engine.Answer | engine.NetworkFailure  # what one attempt brought back
Pacer = pacing.SyncPacer | pacing.AsyncPacer


def answer(status: int, body: bytes, headers: Mapping[str, str]) -> engine.Answer:
    """What a driver hands the engine when Kore (or something in between) answered."""
    return engine.Answer(status, body, headers.get("Retry-After"), headers.get("Location"))


class JwtSigner:
    """Signs and caches the ``auth`` header: a JWT signed with the app's client secret, ``appId`` its client id
    (with ``jwt_per_request``, a fresh one per request, for apps that treat a ``jti`` as single use). Safe to share
    between threads and triggers. Tokens are never handed to Airflow's masker (see ``config._masked``): a token
    lives minutes, never reaches a log, exception or XCom, and :func:`~.exceptions.redact` scrubs any JWT."""

    def __init__(self, config: KoreConnectionConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.RLock()  # reentrant: on_kill (a SIGTERM handler) may sign inside token()
        self._token: str | None = None
        self._expires_at = 0.0
        self.signed = 0  # tokens signed (benchmarks and tests read it)

    def token(self) -> str:
        """A valid token: the cached one, or a freshly signed one (always, with ``jwt_per_request``)."""
        config = self._config
        with self._lock:
            now = self._clock()
            if not config.jwt_per_request and self._token is not None and now < self._expires_at - REFRESH_MARGIN:
                return self._token
            import jwt  # only to sign (PyJWT pulls in cryptography helpers: kept off the DAG-parse path)

            issued = int(now)
            claims = {"appId": config.client_id, "iat": issued, "exp": issued + TOKEN_LIFETIME, "jti": uuid.uuid4().hex}
            self._token = jwt.encode(claims, config.client_secret, algorithm=config.jwt_algorithm)
            self._expires_at = now + TOKEN_LIFETIME
            self.signed += 1
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget the cached token (after a 401), unless another caller already replaced it."""
        with self._lock:
            if token == self._token:
                self._token = None


class Driver:
    """The request counters, and one attempt's bookkeeping around :meth:`engine.Exchange.decide`."""

    log: Any
    if TYPE_CHECKING:

        @property
        def signer(self) -> JwtSigner: ...

    requests_sent = retries = rate_limited = auth_refreshes = 0

    def _decided(
        self, exchange: engine.Exchange, what: Outcome, sent_at: float, token: str, pacer: Pacer
    ) -> engine.Decision:
        """The engine's decision on one attempt, recorded by the pacer and the counters; a refused token is dropped."""
        decision = exchange.decide(what, pacing.clock())
        pacer.record(decision.pacing, sent_at, decision.retry_after)
        self.requests_sent += 1
        self.rate_limited += decision.pacing == "rate_limited"
        if decision.action == "resign":
            self.auth_refreshes += 1
            self.signer.invalidate(token)
        elif decision.action == "retry":
            self.retries += 1
            self.log.warning("%s; retry %d in %.1fs", decision.error, exchange.retries, decision.delay)
        return decision


_registry: dict[tuple[asyncio.AbstractEventLoop, str], KoreAsyncClient] = {}


class SharedClient:
    """``async with shared_client(conn_id) as client``: hold the loop's shared client, then let go (normally, by
    an exception or by cancellation); the last holder closes it."""

    def __init__(self, kore_conn_id: str = DEFAULT_CONN_ID) -> None:
        self.kore_conn_id = kore_conn_id
        self.client: KoreAsyncClient | None = None

    async def __aenter__(self) -> KoreAsyncClient:
        from airflow_provider_kore.aio import KoreAsyncClient

        key = (asyncio.get_running_loop(), self.kore_conn_id)
        client = self.client = _registry.get(key) or _registry.setdefault(key, KoreAsyncClient(self.kore_conn_id))
        client.users += 1
        try:
            await client.open()
        except BaseException:
            _forget(key, client)  # a later user starts afresh (the connection may be fixed by then)
            await self.release()
            raise
        return client

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    async def release(self) -> None:
        """Let go of the client (once; later calls do nothing)."""
        client, self.client = self.client, None
        if client is not None:
            client.users -= 1
            if client.users <= 0:
                _forget((asyncio.get_running_loop(), self.kore_conn_id), client)  # a new user builds a fresh one
                await asyncio.shield(client.aclose())  # finishes even when the releasing trigger is cancelled


shared_client = SharedClient  # the running loop's KoreAsyncClient for a connection, as an async context manager


def _forget(key: tuple[asyncio.AbstractEventLoop, str], client: KoreAsyncClient) -> None:
    if _registry.get(key) is client:
        del _registry[key]


def active_clients() -> list[KoreAsyncClient]:
    """Clients currently registered, in every loop (tests and benchmarks)."""
    return list(_registry.values())


def reset_shared_clients() -> None:
    """Forget every registered client without closing it (tests: between event loops)."""
    _registry.clear()
