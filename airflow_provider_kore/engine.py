"""The one request engine: what to do with each answer or network failure. No I/O.

The sync hook (``requests``) and the async client (``aiohttp``) are thin drivers around it, the
way h11 keeps HTTP/1.1 apart from sockets: a driver signs, takes its pacing turn, sends, and
hands what happened to :meth:`Exchange.decide`, which answers with one :class:`Decision`:

* ``done``     the parsed answer (``Decision.result``);
* ``fail``     raise ``Decision.error`` (the one matching :class:`~.exceptions.KoreError`);
* ``retry``    send again after ``Decision.delay`` seconds (a retry is spent);
* ``resign``   drop the token the request carried and send again at once (first 401);
* ``reload``   re-read the connection (second 401: the secret may have been rotated), then call
  :meth:`Exchange.reloaded` and act on its decision;
* ``requeue``  take a new pacing turn: the connection is paused (429, or an outage for a
  patient read); no retry is spent;
* ``unknown``  a request that must not be sent twice got no usable answer: raise
  ``Decision.error`` (:class:`~.exceptions.KoreOutcomeUnknownError`), never re-send.

``Decision.pacing`` says what the connection's pacer must record for the attempt:
``"answer"``, ``"rate_limited"``, ``"unavailable"`` or None.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from airflow_provider_kore.api import PreparedCall, parse_answer
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreConnectionError,
    KoreError,
    KoreOutcomeUnknownError,
    KoreRateLimitError,
    KoreServerError,
    Secrets,
)

# A 5xx from a gateway may come after Kore acted; a 503 is a refusal (Kore did not act).
REFUSED_STATUS = frozenset({503})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
#: An attempt made at (or just before) its deadline still gets this long for an answer.
LAST_ATTEMPT_TIMEOUT = 2.0
#: A ``Retry-After`` is honoured up to this many seconds.
RETRY_AFTER_MAX = 120.0

#: Network failures, by what they say about the request (drivers classify their exceptions).
CONNECT = "connect"  # never left: refused, name lookup failed, connect timeout
TLS = "tls"  # the TLS handshake failed: retrying cannot help
TIMEOUT = "timeout"  # sent, no complete answer in time
DROPPED = "dropped"  # sent, the connection closed before a complete answer
NETWORK_KINDS = (CONNECT, TLS, TIMEOUT, DROPPED)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, never shorter than a (capped) ``Retry-After``."""

    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** max(0, retry_number - 1)))
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, RETRY_AFTER_MAX))
        return wait


@dataclass(frozen=True)
class Answer:
    """Kore (or something in between) answered."""

    status: int
    body: bytes = b""
    retry_after: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class NetworkFailure:
    """No answer: ``kind`` is one of :data:`NETWORK_KINDS`; ``detail`` is short and secret-free."""

    kind: str
    detail: str


@dataclass(frozen=True)
class Decision:
    action: str
    result: dict[str, Any] | None = None
    error: KoreError | None = None
    delay: float = 0.0
    pacing: str | None = None
    retry_after: float | None = None

    def final(self) -> dict[str, Any] | None:
        """The result once ``done``; raises the error once ``fail`` / ``unknown``; None to go on."""
        if self.action in ("fail", "unknown") and self.error is not None:
            raise self.error
        return self.result if self.action == "done" else None


class Exchange:
    """One request's life: attempts, retries spent, token re-signs, and the decisions.

    :param call: The prepared request.
    :param secrets: Values to scrub from every message (the client secret, the token).
    :param max_retries: Retries of transient failures (a 429 never spends one).
    :param patient: A read that rides out an outage: a transient failure pauses the connection
        and the request queues again until its deadline (the pacer enforces it).
    :param priority: A stop that outranks reads (``on_kill``): a 429 is waited out here, by
        backoff, instead of queueing behind the connection's pause.
    :param deadline: Pacing-clock time after which no retry is worth making.
    """

    def __init__(
        self,
        call: PreparedCall,
        *,
        secrets: Secrets,
        max_retries: int = 5,
        patient: bool = False,
        priority: bool = False,
        deadline: float | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.call = call
        self.secrets = secrets
        self.policy = policy or RetryPolicy(max_retries=max_retries)
        self.patient = patient and call.endpoint.idempotent
        self.priority = priority
        self.deadline = deadline
        self.attempts = 0
        self.retries = 0
        self._resigned = False
        self._reloaded = False
        self._pending_auth: Answer | None = None
        #: The last transient failure, raised when time runs out.
        self.last_error: KoreError | None = None

    # -- what the driver asks -----------------------------------------------------------------

    def timeout(self, now: float, configured: float) -> float:
        """The attempt's timeout: the connection's, but not past the deadline (a last read gets a moment)."""
        if self.deadline is None:
            return configured
        return min(configured, max(LAST_ATTEMPT_TIMEOUT, self.deadline - now))

    def decide(self, what: Answer | NetworkFailure, now: float) -> Decision:
        """What to do after one attempt."""
        self.attempts += 1
        if isinstance(what, NetworkFailure):
            return self._network(what, now)
        status = what.status
        retry_after = parse_retry_after(what.retry_after)
        if status == 429:
            error = self._error(what)
            self.last_error = error
            if self.priority:
                return self._retry(error, now, retry_after, pacing="rate_limited")
            return Decision("requeue", pacing="rate_limited", retry_after=retry_after)
        if 300 <= status < 400:
            where = self.call.where
            target = _host_of(what.location)
            return Decision(
                "fail",
                error=KoreApiError(
                    self.secrets.redact(
                        f"{where} failed: HTTP {status} redirect{target}; redirects are not followed "
                        "(the auth header would travel with it): check the connection's platform URL"
                    ),
                    operation=self.call.operation,
                    status_code=status,
                ),
                pacing="answer",
            )
        if status == 401:
            if not self._resigned:
                self._resigned = True
                return Decision("resign", pacing="answer")
            if not self._reloaded:
                self._reloaded = True
                self._pending_auth = what
                return Decision("reload", pacing="answer")
        if status in TRANSIENT_STATUS:
            error = self._error(what)
            if not self.call.endpoint.idempotent and status not in REFUSED_STATUS:
                return self._unknown(f"HTTP {status}", pacing="answer")
            return self._transient(error, now, retry_after, pacing="answer")
        return self._finish(what)

    def reloaded(self, changed: bool) -> Decision:
        """After a ``reload``: send again with new credentials, or fail with the 401."""
        answer, self._pending_auth = self._pending_auth, None
        if changed:
            self._resigned = False
            return Decision("resign")
        assert answer is not None
        return self._finish(answer)

    def out_of_time(self, reason: str) -> KoreError:
        """The error to raise when the pacer has no turn before the deadline."""
        if reason == "unavailable" and self.last_error is not None:
            self.last_error.deadline_reached = True
            return self.last_error
        what = {
            "budget": "the connection's request budget (max_requests_per_minute / max_requests_per_hour) has no room",
            "rate limit": "Kore.ai's rate limit (429) leaves no room for a request",
            "unavailable": "Kore.ai is unavailable",
        }.get(reason, reason)
        error = KoreRateLimitError(
            f"{self.call.where}: {what} before the deadline; waited on Kore's rate limit",
            operation=self.call.operation,
        )
        error.deadline_reached = True
        return error

    # -- rules ----------------------------------------------------------------------------------

    def _network(self, failure: NetworkFailure, now: float) -> Decision:
        call = self.call
        text = f"{failure.detail} ({call.base_url})"
        if failure.kind == TLS:
            return Decision(
                "fail",
                error=KoreConnectionError(
                    f"{call.where} failed: {text}: the TLS handshake failed; if the server speaks plain "
                    "HTTP (a local simulator), set the host to http://... or the schema to http",
                    operation=call.operation,
                    transient=False,
                ),
            )
        if failure.kind != CONNECT and not call.endpoint.idempotent:
            return self._unknown(failure.detail)
        error = KoreConnectionError(f"{call.where} failed: {text}", operation=call.operation)
        return self._transient(error, now, None, pacing="unavailable" if self.patient else None)

    def _transient(self, error: KoreError, now: float, retry_after: float | None, *, pacing: str | None) -> Decision:
        self.last_error = error
        if self.patient:
            return Decision("requeue", pacing="unavailable", retry_after=retry_after)
        return self._retry(error, now, retry_after, pacing=pacing)

    def _retry(self, error: KoreError, now: float, retry_after: float | None, *, pacing: str | None) -> Decision:
        if self.retries >= self.policy.max_retries and not (self.priority and self.deadline is not None):
            return Decision("fail", error=_after_attempts(error, self.attempts), pacing=pacing)
        delay = self.policy.delay(self.retries + 1, retry_after)
        if self.deadline is not None and now + delay >= self.deadline:
            error.deadline_reached = True
            return Decision("fail", error=_after_attempts(error, self.attempts), pacing=pacing)
        self.retries += 1
        return Decision("retry", error=error, delay=delay, pacing=pacing)

    def _unknown(self, cause: str, *, pacing: str | None = None) -> Decision:
        call = self.call
        return Decision(
            "unknown",
            error=KoreOutcomeUnknownError(
                f"{call.where}: the answer was lost ({cause}); Kore.ai may have acted on it, so it was not sent again",
                operation=call.operation,
                cause=cause,
            ),
            pacing=pacing,
        )

    def _finish(self, answer: Answer) -> Decision:
        try:
            result = parse_answer(self.call, answer.status, answer.body, secrets=self.secrets)
        except KoreError as error:
            return Decision("fail", error=error, pacing="answer")
        return Decision("done", result=result, pacing="answer")

    def _error(self, answer: Answer) -> KoreError:
        try:
            parse_answer(self.call, answer.status, answer.body, secrets=self.secrets)
        except KoreError as error:
            return error
        return KoreServerError(f"{self.call.where} failed: HTTP {answer.status}", operation=self.call.operation)


def _after_attempts(error: KoreError, attempts: int) -> KoreError:
    if attempts > 1 and error.args:
        error.args = (f"{error.args[0]} (after {attempts} attempts)", *error.args[1:])
    return error


def _host_of(location: str | None) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(location or "").hostname
    return f" to {host}" if host else ""


__all__ = [
    "CONNECT",
    "DROPPED",
    "NETWORK_KINDS",
    "TIMEOUT",
    "TLS",
    "Answer",
    "Decision",
    "Exchange",
    "NetworkFailure",
    "RetryPolicy",
    "parse_retry_after",
]
