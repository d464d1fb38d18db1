"""The one place that signs Kore.ai JWTs.

Kore.ai's public APIs take a JWT in the ``auth`` header, signed with the JWT app's client
secret, whose ``appId`` claim is the app's client id. A token is signed once and reused until
shortly before it expires (or, with ``jwt_per_request``, signed fresh for every request, for
apps that treat a ``jti`` as single use).

Tokens are NOT handed to Airflow's secrets masker: it rebuilds one regex over every secret at
each new one, so a token per request would slow a triggerer down month after month. A token
lives minutes, never reaches a log, exception, XCom or rendered field (the end-to-end leak scans
check), and JWT-shaped text is masked by Airflow and scrubbed by :func:`~.exceptions.redact`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

#: Lifetime of a signed token. Kore asks for a short one; five minutes covers a slow request.
TOKEN_LIFETIME = 300.0
#: Sign anew this long before expiry, so a token never expires in flight.
REFRESH_MARGIN = 60.0


class JwtSigner:
    """Signs and caches the ``auth`` token; safe to share between threads and triggers."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        algorithm: str = "HS256",
        per_request: bool = False,
        lifetime: float = TOKEN_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_id = client_id
        self._secret = client_secret
        self._algorithm = algorithm
        self._per_request = per_request
        self._lifetime = lifetime
        self._clock = clock
        # Reentrant: on_kill (a SIGTERM handler) may sign while this thread is inside token().
        self._lock = threading.RLock()
        self._token: str | None = None
        self._expires_at = 0.0
        #: How many tokens were signed (benchmarks and tests read it).
        self.signed = 0

    def __repr__(self) -> str:
        return f"JwtSigner(client_id={self._client_id!r}, algorithm={self._algorithm!r})"

    def token(self) -> str:
        """A valid token: the cached one, or a freshly signed one."""
        if self._per_request:
            return self._sign(self._clock())
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - min(REFRESH_MARGIN, self._lifetime / 2):
                self._token = self._sign(now)
                self._expires_at = now + self._lifetime
            return self._token

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (after a 401), unless another caller already replaced it."""
        with self._lock:
            if token is None or token == self._token:
                self._token = None

    def _sign(self, now: float) -> str:
        import jwt  # PyJWT pulls in cryptography helpers: keep it off the DAG-parse path

        issued = int(now)
        claims = {"appId": self._client_id, "iat": issued, "exp": issued + int(self._lifetime), "jti": uuid.uuid4().hex}
        self.signed += 1
        return jwt.encode(claims, self._secret, algorithm=self._algorithm)
