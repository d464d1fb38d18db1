"""A ``kore`` connection turned into validated settings: :class:`KoreConnectionConfig`. No I/O."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_kore.exceptions import KoreConfigurationError
from airflow_provider_kore.ids import validate_id

_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
#: Numeric extras: minimum, type (an unset one takes KoreConnectionConfig's default).
_NUMBERS: dict[str, tuple[float, type[float] | type[int]]] = {
    "timeout": (0.001, float),
    "max_retries": (0, int),
    "max_requests_per_minute": (1, int),
    "max_requests_per_hour": (1, int),
}
# Hashes of the client secrets this process handed to Airflow's masker: it rebuilds one regex over every
# secret at each new one, so each distinct secret is registered once (and a JWT never).
_masked: set[int] = set()


def _as_bool(key: str, value: Any) -> bool:
    flag = value if isinstance(value, bool) else _BOOLS.get(str(value).lower())
    if flag is None:
        raise KoreConfigurationError(f"connection extra {key} must be true or false; got {value!r}")
    return flag


def _as_number(key: str, value: Any) -> Any:
    minimum, kind = _NUMBERS[key]
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):  # int() of an infinite float overflows
        number = None
    if number is None or not math.isfinite(number):
        raise KoreConfigurationError(f"connection extra {key} must be a finite number; got {value!r}")
    if isinstance(value, bool) or number < minimum:
        raise KoreConfigurationError(f"connection extra {key} must be at least {minimum}; got {value!r}")
    return number


def normalise_base_url(host: str | None, *, port: int | None = None, schema: str | None = None) -> str:
    """``https://platform.kore.ai`` from a full URL or a bare host (https unless the schema says http)."""
    if not host or not str(host).strip():
        raise KoreConfigurationError("no host (the Kore.ai platform URL)")
    host = str(host).strip().rstrip("/")
    if "://" not in host:
        scheme = (schema or "").strip().lower()
        host = f"{scheme if scheme in ('http', 'https') else 'https'}://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KoreConfigurationError(f"the host must be an http(s) URL; got {host!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise KoreConfigurationError("the host must be a plain URL (no query or credentials)")
    netloc = f"{parts.netloc}:{int(port)}" if port and parts.port is None else parts.netloc
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class KoreConnectionConfig:
    """A ``kore`` connection, validated. The secret is kept out of ``repr``."""

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    account_id: str
    stream_id: str | None = None
    iid: str | None = None
    timeout: float = 30.0
    max_retries: int = 5
    jwt_algorithm: str = "HS256"
    verify: bool | str = True
    jwt_per_request: bool = False
    max_requests_per_minute: int | None = None
    max_requests_per_hour: int | None = None
    conn_id: str = "kore_default"

    def tls_verify(self) -> bool | str:
        """``verify`` as both drivers apply it: ``True`` means the REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE file when one
        is set (as requests reads it), so a worker and the triggerer trust the same CAs."""
        if self.verify is not True:
            return self.verify
        return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True

    @classmethod
    def load(cls, conn_id: str) -> KoreConnectionConfig:
        """Look the connection up, validate it, and register its secret with the masker (once). Blocking (Airflow's
        lookup and masker may wait on the task supervisor): on an event loop, run it in a worker thread."""
        from airflow_provider_kore._compat import get_connection, mask_secret

        config = cls.from_connection(get_connection(conn_id), conn_id=conn_id)
        if hash(config.client_secret) not in _masked:
            mask_secret(config.client_secret)
            _masked.add(hash(config.client_secret))
        return config

    @classmethod
    def from_connection(cls, conn: Any, *, conn_id: str | None = None) -> KoreConnectionConfig:
        """Build from an Airflow ``Connection`` (or anything with the same attributes)."""
        conn_id = conn_id or getattr(conn, "conn_id", None) or "kore_default"
        try:
            raw = getattr(conn, "extra_dejson", {})
            if not isinstance(raw, Mapping):
                raise KoreConfigurationError("the extra must be a JSON object")
            stripped = {k: v.strip() if isinstance(v, str) else v for k, v in raw.items()}
            extra = {k: v for k, v in stripped.items() if v not in (None, "")}  # a blank extra is unset
            client_id, secret = str(getattr(conn, "login", None) or "").strip(), getattr(conn, "password", None)
            if not client_id:
                raise KoreConfigurationError("no Client ID (the login field)")
            if not secret:
                raise KoreConfigurationError("no Client Secret (the password field)")
            if "account_id" not in extra:
                raise KoreConfigurationError("no account_id extra (the Kore.ai account id)")
            algorithm = str(extra.get("jwt_algorithm") or "HS256").upper()
            if algorithm not in ("HS256", "HS512"):
                raise KoreConfigurationError(f"extra jwt_algorithm must be HS256 or HS512; got {algorithm!r}")
            verify = extra.get("verify", True)
            if not isinstance(verify, str) or verify.lower() in _BOOLS:  # else a CA bundle path
                verify = _as_bool("verify", verify)
            return cls(
                base_url=normalise_base_url(
                    getattr(conn, "host", None), port=getattr(conn, "port", None), schema=getattr(conn, "schema", None)
                ),
                client_id=validate_id("client_id", client_id),
                client_secret=str(secret),
                account_id=validate_id("account_id", str(extra["account_id"])),
                jwt_algorithm=algorithm,
                verify=verify,
                jwt_per_request=_as_bool("jwt_per_request", extra.get("jwt_per_request", False)),
                stream_id=validate_id("stream_id", str(extra["stream_id"])) if "stream_id" in extra else None,
                iid=validate_id("iid", str(extra["iid"])) if "iid" in extra else None,
                conn_id=conn_id,
                **{key: _as_number(key, extra[key]) for key in _NUMBERS if key in extra},
            )
        except KoreConfigurationError as exc:
            raise KoreConfigurationError(f"kore connection {conn_id!r}: {exc}") from None

    def resolve_stream_id(self, stream_id: str | None) -> tuple[str, str]:
        """The operation's stream id, else the connection's, and where it came from."""
        if stream_id is not None:
            return validate_id("stream_id", stream_id), "the task"
        if self.stream_id is None:
            raise KoreConfigurationError(
                f"no stream_id: set the stream_id extra on kore connection {self.conn_id!r} "
                "or pass stream_id= to the task"
            )
        return self.stream_id, f"connection {self.conn_id!r}"
