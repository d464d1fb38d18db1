"""Kore.ai's ``auth`` header: a JWT signed with the JWT app's client secret, its ``appId`` the client id.

Tokens are never handed to Airflow's secrets masker (see :meth:`~.config.KoreConnectionConfig.load`): a token
lives minutes, never reaches a log, exception or XCom, and :func:`~.exceptions.redact` scrubs JWT-shaped text.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_kore.config import KoreConnectionConfig

TOKEN_LIFETIME = 300  # Kore asks for a short one; five minutes covers a slow request
REFRESH_MARGIN = 60.0  # signed anew this long before expiry, so a token never expires in flight


class JwtSigner:
    """Signs and caches the token (with ``jwt_per_request``, a fresh one per request, for apps that treat a
    ``jti`` as single use); safe to share between threads and triggers."""

    def __init__(self, config: KoreConnectionConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.RLock()  # reentrant: on_kill (a SIGTERM handler) may sign inside token()
        self._token: str | None = None
        self._expires_at = 0.0
        self.signed = 0  # tokens signed (benchmarks and tests read it)

    def token(self) -> str:
        """A valid token: the cached one, or a freshly signed one."""
        if self._config.jwt_per_request:
            return self._sign(self._clock())
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - REFRESH_MARGIN:
                self._token = self._sign(now)
                self._expires_at = now + TOKEN_LIFETIME
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget the cached token (after a 401), unless another caller already replaced it."""
        with self._lock:
            if token == self._token:
                self._token = None

    def _sign(self, now: float) -> str:
        import jwt  # PyJWT pulls in cryptography helpers: keep it off the DAG-parse path

        config, issued = self._config, int(now)
        self.signed += 1
        claims = {"appId": config.client_id, "iat": issued, "exp": issued + TOKEN_LIFETIME, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, config.client_secret, algorithm=config.jwt_algorithm)
