"""One :class:`~airflow_provider_kore.aio.KoreAsyncClient` per event loop and connection.

A triggerer runs hundreds of triggers in one event loop; ``async with shared_client(conn_id)``
gives each of them the loop's client for the connection (one lookup, one session, one JWT, one
pacer) and closes it when the last holder lets go, normally, by an exception or by cancellation.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from airflow_provider_kore.aio import KoreAsyncClient
from airflow_provider_kore.ids import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from types import TracebackType

_registry: dict[tuple[asyncio.AbstractEventLoop, str], KoreAsyncClient] = {}


class SharedClient:
    """``async with shared_client(conn_id) as client``: hold the loop's shared client, then let go."""

    def __init__(self, kore_conn_id: str = DEFAULT_CONN_ID) -> None:
        self.kore_conn_id = kore_conn_id
        self.client: KoreAsyncClient | None = None

    async def __aenter__(self) -> KoreAsyncClient:
        if self.client is not None:
            raise RuntimeError("this SharedClient is already held; use a new shared_client(...)")
        key = (asyncio.get_running_loop(), self.kore_conn_id)
        client = self.client = _registry.get(key) or _registry.setdefault(key, KoreAsyncClient(self.kore_conn_id))
        client.users += 1
        try:
            await client._ensure_open()
        except BaseException:
            _forget(key, client)  # a later user starts afresh (the connection may be fixed by then)
            await self.release()
            raise
        return client

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.release()

    async def release(self) -> None:
        """Let go of the client (once; later calls do nothing); the last holder closes it."""
        client, self.client = self.client, None
        if client is None:
            return
        client.users -= 1
        if client.users <= 0:
            _forget((asyncio.get_running_loop(), self.kore_conn_id), client)  # a new user builds a fresh one
            await asyncio.shield(client.aclose())  # finishes even when the releasing trigger is cancelled


def _forget(key: tuple[asyncio.AbstractEventLoop, str], client: KoreAsyncClient) -> None:
    if _registry.get(key) is client:
        del _registry[key]


def shared_client(kore_conn_id: str = DEFAULT_CONN_ID) -> SharedClient:
    """The running loop's :class:`KoreAsyncClient` for ``kore_conn_id``, as an async context manager."""
    return SharedClient(kore_conn_id)


def active_clients() -> list[KoreAsyncClient]:
    """Clients currently registered, in every loop (for tests and benchmarks)."""
    return list(_registry.values())


def reset_shared_clients() -> None:
    """Forget every registered client without closing it (tests: between event loops)."""
    _registry.clear()
