"""The one request engine, sans I/O (as h11 is for HTTP/1.1): the sync hook and the async client
only take their pacing turn, sign, send, hand what happened to :meth:`Exchange.decide` and act on
the :class:`Decision`."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_kore.api import PreparedCall, parse_answer
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreConnectionError,
    KoreError,
    KoreOutcomeUnknownError,
    KoreRateLimitError,
    Secrets,
)
from airflow_provider_kore.pacing import RETRY_AFTER_MAX  # one cap for a retry's wait and a pause

# A 5xx from a gateway may come after Kore acted; a 503 is a refusal (Kore did not act).
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
#: An attempt made at (or just before) its deadline still gets this long for an answer.
LAST_ATTEMPT_TIMEOUT = 2.0
BACKOFF_BASE, BACKOFF_MAX = 1.0, 30.0  # seconds: the first retry's step, the longest

#: Network failures, by what they say about the request (drivers classify their exceptions).
CONNECT = "connect"  # never left: refused, name lookup failed, connect timeout
TLS = "tls"  # the TLS handshake failed
TIMEOUT = "timeout"  # sent, no complete answer in time
DROPPED = "dropped"  # sent, the connection closed before a complete answer
_TLS_HINT = (
    ": the TLS handshake failed; if the server speaks plain HTTP (a local simulator), "
    "set the host to http://... or the schema to http"
)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    text = str(value or "").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError):
            return None
    return None if math.isnan(seconds) else max(0.0, seconds)


def backoff(retry_number: int, retry_after: float | None = None) -> float:
    """Seconds before retry ``retry_number`` (1 for the first): exponential, each wait half to all of its step,
    never shorter than a (capped) ``Retry-After``."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (retry_number - 1))
    wait = random.uniform(ceiling / 2, ceiling)
    return wait if retry_after is None else max(wait, min(retry_after, RETRY_AFTER_MAX))


@dataclass(frozen=True)
class Answer:
    """Kore (or something in between) answered."""

    status: int
    body: bytes = b""
    retry_after: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class NetworkFailure:
    """No answer: ``kind`` is CONNECT, TLS, TIMEOUT or DROPPED; ``detail`` is short and secret-free."""

    kind: str
    detail: str


@dataclass(frozen=True)
class Decision:
    """What the driver does next (``action``), and what its pacer records (``pacing``).

    ``done``: return ``result``. ``fail``: raise ``error``. ``unknown``: raise ``error`` (Kore may have
    acted: never re-send). ``retry``: send again after ``delay`` seconds. ``resign``: drop the token and
    send again (a first 401). ``reload``: re-read the connection, then act on :meth:`Exchange.reloaded`
    (a second 401). ``requeue``: take a new pacing turn (a 429, or an outage for a patient read).
    """

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
    :param patient: A read that rides out an outage, queueing again until its deadline instead of retrying.
    :param priority: A stop that outranks reads (``on_kill``): a 429 is retried by backoff, not queued.
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
    ) -> None:
        self.call, self.secrets, self.priority, self.deadline = call, secrets, priority, deadline
        self.max_retries = max_retries
        self.patient = patient and call.endpoint.idempotent
        self.attempts = self.retries = 0
        self._resigned = False
        self._refused: Decision | None = None  # after a second 401: its failure, if the connection is unchanged
        #: The last transient failure, raised when time runs out.
        self.last_error: KoreError | None = None

    def timeout(self, now: float, configured: float) -> float:
        """The attempt's timeout: the connection's, but not past the deadline (a last read gets a moment)."""
        return configured if self.deadline is None else min(configured, max(LAST_ATTEMPT_TIMEOUT, self.deadline - now))

    def decide(self, what: Answer | NetworkFailure, now: float) -> Decision:
        """What to do after one attempt."""
        self.attempts += 1
        call = self.call
        if isinstance(what, NetworkFailure):
            tls = what.kind == TLS  # retrying cannot help
            text = f"{call.where} failed: {what.detail} ({call.base_url})" + (_TLS_HINT if tls else "")
            error: KoreError = KoreConnectionError(text, operation=call.operation, transient=not tls)
            if tls:
                return Decision("fail", error=error)
            if what.kind != CONNECT and not call.endpoint.idempotent:
                return self._unknown(what.detail)
            return self._transient(error, now, None, pacing=None)
        if 300 <= what.status < 400:
            host = urlsplit(what.location or "").hostname
            message = (
                f"{call.where} failed: HTTP {what.status} redirect{f' to {host}' if host else ''}; redirects are not "
                "followed (the auth header would travel with it): check the connection's platform URL"
            )
            error = KoreApiError(self.secrets.redact(message), operation=call.operation, status_code=what.status)
            return Decision("fail", error=error, pacing="answer")
        if what.status == 401 and not self._resigned:
            self._resigned = True
            return Decision("resign", pacing="answer")
        if what.status == 401 and self._refused is None:
            self._refused = self._parse(what, now)
            return Decision("reload", pacing="answer")
        return self._parse(what, now)

    def reloaded(self, changed: bool) -> Decision:
        """After a ``reload``: send again with new credentials, or fail with the 401."""
        if changed:
            self._resigned = False
            return Decision("resign")
        assert self._refused is not None
        return self._refused

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
        message = f"{self.call.where}: {what} before the deadline; waited on Kore's rate limit"
        return KoreRateLimitError(message, operation=self.call.operation, deadline_reached=True)

    def _parse(self, answer: Answer, now: float) -> Decision:
        """The parsed answer, or its error: a 429 or a 5xx may be waited out or retried."""
        status = answer.status
        try:
            return Decision(
                "done", result=parse_answer(self.call, status, answer.body, secrets=self.secrets), pacing="answer"
            )
        except KoreError as error:
            if status != 429 and status not in TRANSIENT_STATUS:
                return Decision("fail", error=error, pacing="answer")
            if status not in (429, 503) and not self.call.endpoint.idempotent:
                return self._unknown(f"HTTP {status}", pacing="answer")
            pacing = "rate_limited" if status == 429 else "answer"
            return self._transient(error, now, parse_retry_after(answer.retry_after), pacing=pacing)

    def _transient(self, error: KoreError, now: float, retry_after: float | None, *, pacing: str | None) -> Decision:
        """Queue again, or retry after a backoff, or fail ``(after N attempts)``."""
        self.last_error = error
        if pacing == "rate_limited" and not self.priority:  # wait out the connection's pause
            return Decision("requeue", pacing="rate_limited", retry_after=retry_after)
        if pacing != "rate_limited" and self.patient:  # an outage: ride it out until the deadline
            return Decision("requeue", pacing="unavailable", retry_after=retry_after)
        if self.retries < self.max_retries or (self.priority and self.deadline is not None):
            delay = backoff(self.retries + 1, retry_after)
            if self.deadline is None or now + delay < self.deadline:
                self.retries += 1
                return Decision("retry", error=error, delay=delay, pacing=pacing)
            error.deadline_reached = True
        if self.attempts > 1 and error.args:
            error.args = (f"{error.args[0]} (after {self.attempts} attempts)", *error.args[1:])
        return Decision("fail", error=error, pacing=pacing)

    def _unknown(self, cause: str, *, pacing: str | None = None) -> Decision:
        message = (
            f"{self.call.where}: the answer was lost ({cause}); Kore.ai may have acted on it, so it was not sent again"
        )
        error = KoreOutcomeUnknownError(message, operation=self.call.operation, cause=cause)
        return Decision("unknown", error=error, pacing=pacing)
