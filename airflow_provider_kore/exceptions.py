"""The provider's exceptions (README.md draws the hierarchy). Their messages never carry a header, the
client secret or a JWT: :func:`redact` is applied to every piece of text from outside."""

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
    return text[:_MAX_REMOTE_TEXT] + "..." if len(text) > _MAX_REMOTE_TEXT else text


class Secrets:
    """The values :func:`redact` removes from one call's messages; ``repr`` hides them (Airflow 3.0's
    ``dag.test()`` prints a traceback's locals unmasked)."""

    __slots__ = ("_values",)

    def __init__(self, *values: str | None) -> None:
        self._values = tuple(value for value in values if value)

    def __repr__(self) -> str:
        return "Secrets(***)"

    def redact(self, text: str) -> str:
        return redact(text, *self._values)


class KoreError(AirflowException):
    """Base class of every error this provider raises. Keyword arguments set the class's attributes."""

    #: True when the same request may succeed if tried again later.
    transient: bool = False
    #: True when raised because the caller's deadline came (or would) before Kore could answer.
    deadline_reached: bool = False
    operation: str = ""

    def __init__(self, *args: object, **attributes: object) -> None:
        super().__init__(*args)
        for name, value in attributes.items():
            if not hasattr(self, name):
                raise TypeError(f"{type(self).__name__} has no attribute {name!r}")
            setattr(self, name, value)


class KoreConfigurationError(KoreError, ValueError):
    """Bad input (an id, a campaign type, a parameter) or an incomplete ``kore`` connection, before any request."""


class KoreConnectionError(KoreError):
    """Kore.ai could not be reached, or did not answer in time (transient), or the TLS handshake failed (not)."""

    transient = True


class KoreOutcomeUnknownError(KoreError):
    """A request not safe to send twice (a start) got no usable answer: Kore may have acted, so it is not re-sent."""

    cause: str = ""
    #: The campaign status read after the lost answer, when one could be read.
    status: str | None = None


class KoreApiError(KoreError):
    """Kore.ai answered with an error (an HTTP error, or a 200 whose ``status`` is ``failure``)."""

    campaign_id: str | None = None
    http_status: int | None = None
    kore_message: str | None = None

    def __init__(self, *args: object, status_code: int | None = None, **attributes: object) -> None:
        super().__init__(*args, http_status=status_code, **attributes)


class KoreAuthError(KoreApiError):
    """401 / 403: the JWT was refused (wrong client id or secret, app without the API scope)."""


class KoreNotFoundError(KoreApiError):
    """404: the campaign or stream does not exist for this account."""


class KoreRateLimitError(KoreApiError):
    """429: over Kore.ai's rate limit, and still so after every retry."""

    transient = True
    retry_after: float | None = None


class KoreServerError(KoreApiError):
    """5xx from Kore.ai, still so after every retry."""

    transient = True


class KoreBadResponseError(KoreApiError):
    """An answer that is not the documented JSON (HTML error page, truncated body, wrong shape)."""


class KoreCampaignStatusError(KoreError, AirflowFailException):
    """The campaign reached a failure status, or a terminal status that is not a target: fails without retries."""

    campaign_id: str = ""
    status: str = ""


class KoreCampaignTimeoutError(KoreError, AirflowSensorTimeout):
    """A wait for a campaign status ran out of time: fails without retries; ``soft_fail=True`` skips."""

    campaign_id: str = ""
    status: str | None = None


class KoreCampaignNotFoundError(KoreNotFoundError):
    """No campaign of the type has the name a task asked for (names are matched exactly)."""


class KoreCampaignAmbiguousError(KoreError):
    """Several campaigns of the type share the name a task asked for: pass ``campaign_id`` instead."""
