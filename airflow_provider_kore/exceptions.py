"""The provider's exceptions: one small hierarchy, all of them ``AirflowException``.

::

    KoreError
    ├── KoreConfigurationError      bad input or connection, raised before any request
    ├── KoreConnectionError         network failure or timeout, after retries (TLS failure: at once)
    ├── KoreOutcomeUnknownError     a start whose answer was lost: never re-sent
    ├── KoreApiError                Kore answered with an error
    │   ├── KoreAuthError           401 / 403: wrong client id or secret, or missing scope
    │   ├── KoreNotFoundError       404: unknown campaign or stream
    │   │   └── KoreCampaignNotFoundError  no campaign of the type has the name a task asked for
    │   ├── KoreRateLimitError      429: over Kore's rate limit, after retries
    │   ├── KoreServerError         5xx, after retries
    │   └── KoreBadResponseError    an answer that is not the documented JSON
    ├── KoreCampaignAmbiguousError  several campaigns have that name
    ├── KoreCampaignStatusError     the campaign reached a status it must not (fails the task, no retry)
    └── KoreCampaignTimeoutError    a wait ran out of time (a sensor timeout: no retry, soft_fail skips)

Messages name the operation, the campaign id, the HTTP status and Kore's own error text.
They never carry a header, the client secret or a JWT: :func:`redact` is applied to every
piece of text that came from outside.
"""

from __future__ import annotations

import re

from airflow_provider_kore._compat import AirflowException, AirflowFailException, AirflowSensorTimeout

# Compact JWS (header.payload.signature), base64url; Kore's errors could echo the token back.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_MAX_REMOTE_TEXT = 300


def redact(text: str, *secrets: str | None) -> str:
    """Remove JWTs and the given secrets from text that is about to reach a log or exception."""
    text = _JWT_RE.sub("***", text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    if len(text) > _MAX_REMOTE_TEXT:
        text = text[:_MAX_REMOTE_TEXT] + "..."
    return text


class Secrets:
    """The values :func:`redact` must remove from one call's messages, kept out of every repr.

    Handed around instead of a tuple of strings: a traceback that prints its frames' locals
    (Airflow 3.0's ``dag.test()`` does, unmasked) shows ``Secrets(***)``, not the client secret.
    """

    __slots__ = ("_values",)

    def __init__(self, *values: str | None) -> None:
        self._values = tuple(value for value in values if value)

    def __repr__(self) -> str:
        return "Secrets(***)"

    def redact(self, text: str) -> str:
        """:func:`redact` with these values."""
        return redact(text, *self._values)


class KoreError(AirflowException):
    """Base class of every error this provider raises."""

    #: True when the same request may succeed if tried again later.
    transient: bool = False
    #: True when raised because the caller's deadline came (or would) before Kore could answer.
    deadline_reached: bool = False


class KoreConfigurationError(KoreError, ValueError):
    """Bad input (an id, a campaign type, a parameter) or an incomplete ``kore`` connection.

    Raised before any request is sent; the message names the field.
    """


class KoreConnectionError(KoreError):
    """Kore.ai could not be reached, or did not answer in time (transient), or the TLS handshake failed (not)."""

    transient = True

    def __init__(self, message: str, *, operation: str = "", transient: bool = True) -> None:
        super().__init__(message)
        self.operation = operation
        self.transient = transient


class KoreOutcomeUnknownError(KoreError):
    """A request that must not be sent twice (a start) got no usable answer: Kore may have acted.

    It is never re-sent by the hook. A task retry of the start operator reads the campaign first
    and starts it only if the evidence says the lost start did not run.
    """

    def __init__(self, message: str, *, operation: str = "", cause: str = "", status: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation
        self.cause = cause
        #: The campaign status read after the lost answer, when one could be read.
        self.status = status


class KoreApiError(KoreError):
    """Kore.ai answered with an error (an HTTP error, or a 200 whose ``status`` is ``failure``)."""

    def __init__(
        self,
        message: str,
        *,
        operation: str = "",
        campaign_id: str | None = None,
        status_code: int | None = None,
        kore_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.campaign_id = campaign_id
        self.http_status = status_code
        self.kore_message = kore_message


class KoreAuthError(KoreApiError):
    """401 / 403: the JWT was refused (wrong client id or secret, app without the API scope)."""


class KoreNotFoundError(KoreApiError):
    """404: the campaign or stream does not exist for this account."""


class KoreRateLimitError(KoreApiError):
    """429: over Kore.ai's rate limit, and still so after every retry."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class KoreServerError(KoreApiError):
    """5xx from Kore.ai, still so after every retry."""

    transient = True


class KoreBadResponseError(KoreApiError):
    """An answer that is not the documented JSON (HTML error page, truncated body, wrong shape)."""


class KoreCampaignStatusError(KoreError, AirflowFailException):
    """The campaign reached a failure status, or a terminal status that is not a target.

    Retrying the task cannot change that, so this fails the task without retries.
    """

    def __init__(self, message: str, *, campaign_id: str = "", status: str = "") -> None:
        super().__init__(message)
        self.campaign_id = campaign_id
        self.status = status


class KoreCampaignTimeoutError(KoreError, AirflowSensorTimeout):
    """A wait for a campaign status ran out of time.

    An ``AirflowSensorTimeout``: the task fails without retries (the time budget is spent), and a
    sensor with ``soft_fail=True`` is skipped instead.
    """

    def __init__(self, message: str, *, campaign_id: str = "", status: str | None = None) -> None:
        super().__init__(message)
        self.campaign_id = campaign_id
        self.status = status


class KoreCampaignNotFoundError(KoreNotFoundError):
    """No campaign of the type has the name a task asked for (names are matched exactly)."""


class KoreCampaignAmbiguousError(KoreError):
    """Several campaigns of the type share the name a task asked for: pass ``campaign_id`` instead."""


__all__ = [
    "KoreApiError",
    "KoreAuthError",
    "KoreBadResponseError",
    "KoreCampaignAmbiguousError",
    "KoreCampaignNotFoundError",
    "KoreCampaignStatusError",
    "KoreCampaignTimeoutError",
    "KoreConfigurationError",
    "KoreConnectionError",
    "KoreError",
    "KoreNotFoundError",
    "KoreOutcomeUnknownError",
    "KoreRateLimitError",
    "KoreServerError",
    "Secrets",
    "redact",
]
