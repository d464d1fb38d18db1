"""A ``kore`` connection turned into validated settings: :class:`KoreConnectionConfig`. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_kore.exceptions import KoreConfigurationError
from airflow_provider_kore.ids import validate_id

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
JWT_ALGORITHMS = ("HS256", "HS512")


def _extra(extra: Mapping[str, Any], key: str) -> Any:
    """An extra field; blank is unset."""
    value = extra.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value.strip() if isinstance(value, str) else value


def _as_bool(key: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise KoreConfigurationError(f"connection extra {key} must be true or false; got {value!r}")


def _as_number(key: str, value: Any, default: float | None, *, minimum: float, integer: bool) -> Any:
    if value is None:
        return default
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise KoreConfigurationError(f"connection extra {key} must be a number; got {value!r}") from None
    if isinstance(value, bool) or number < minimum:
        raise KoreConfigurationError(f"connection extra {key} must be at least {minimum}; got {value!r}")
    return number


def normalise_base_url(host: str | None, *, port: int | None = None, schema: str | None = None) -> str:
    """``https://platform.kore.ai`` from a full URL or a bare host (https unless the schema says http)."""
    if not host or not str(host).strip():
        raise KoreConfigurationError("no host (the Kore.ai platform URL)")
    host = str(host).strip().rstrip("/")
    if "://" not in host:
        scheme = schema.strip().lower() if schema and schema.strip().lower() in ("http", "https") else "https"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KoreConfigurationError(f"the host must be an http(s) URL; got {host!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise KoreConfigurationError("the host must be a plain URL (no query or credentials)")
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{int(port)}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


# Connections whose client secret this process has handed to Airflow's masker. The masker
# rebuilds one regex over every secret at each new one: register each secret once, never a token.
_masked: set[int] = set()  # hashes of the secrets registered (one per distinct secret, not per conn id)


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

    @classmethod
    def load(cls, conn_id: str) -> KoreConnectionConfig:
        """Look the connection up, validate it, and register its secret with the masker (once).

        Synchronous: Airflow's lookup and masker may wait on the task supervisor. On an event
        loop run it in a worker thread (``_compat.run_sync``).
        """
        from airflow_provider_kore._compat import get_connection, mask_secret

        config = cls.from_connection(get_connection(conn_id), conn_id=conn_id)
        key = hash(config.client_secret)
        if key not in _masked:
            mask_secret(config.client_secret)
            _masked.add(key)
        return config

    @classmethod
    def from_connection(cls, conn: Any, *, conn_id: str | None = None) -> KoreConnectionConfig:
        """Build from an Airflow ``Connection`` (or anything with the same attributes)."""
        conn_id = conn_id or getattr(conn, "conn_id", None) or "kore_default"
        try:
            return cls._from_connection(conn, conn_id)
        except KoreConfigurationError as exc:
            raise KoreConfigurationError(f"kore connection {conn_id!r}: {exc}") from None

    @classmethod
    def _from_connection(cls, conn: Any, conn_id: str) -> KoreConnectionConfig:
        extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
        if not isinstance(extra, Mapping):
            raise KoreConfigurationError("the extra must be a JSON object")
        client_id = getattr(conn, "login", None)
        secret = getattr(conn, "password", None)
        if not client_id or not str(client_id).strip():
            raise KoreConfigurationError("no Client ID (the login field)")
        if not secret:
            raise KoreConfigurationError("no Client Secret (the password field)")
        account_id = _extra(extra, "account_id")
        if account_id is None:
            raise KoreConfigurationError("no account_id extra (the Kore.ai account id)")
        stream_id = _extra(extra, "stream_id")
        iid = _extra(extra, "iid")
        algorithm = str(_extra(extra, "jwt_algorithm") or "HS256").upper()
        if algorithm not in JWT_ALGORITHMS:
            raise KoreConfigurationError(
                f"extra jwt_algorithm must be one of {', '.join(JWT_ALGORITHMS)}; got {algorithm!r}"
            )
        verify_raw = _extra(extra, "verify")
        verify: bool | str
        if isinstance(verify_raw, str) and verify_raw.lower() not in _TRUE | _FALSE:
            verify = verify_raw  # a CA bundle path
        else:
            verify = _as_bool("verify", verify_raw, True)
        per_minute, per_hour = (
            _as_number(key, _extra(extra, key), None, minimum=1, integer=True)
            for key in ("max_requests_per_minute", "max_requests_per_hour")
        )
        return cls(
            base_url=normalise_base_url(
                getattr(conn, "host", None), port=getattr(conn, "port", None), schema=getattr(conn, "schema", None)
            ),
            client_id=validate_id("client_id", str(client_id).strip()),
            client_secret=str(secret),
            account_id=validate_id("account_id", str(account_id)),
            stream_id=validate_id("stream_id", str(stream_id)) if stream_id is not None else None,
            iid=validate_id("iid", str(iid)) if iid is not None else None,
            timeout=_as_number("timeout", _extra(extra, "timeout"), 30.0, minimum=0.001, integer=False),
            max_retries=_as_number("max_retries", _extra(extra, "max_retries"), 5, minimum=0, integer=True),
            jwt_algorithm=algorithm,
            verify=verify,
            jwt_per_request=_as_bool("jwt_per_request", _extra(extra, "jwt_per_request"), False),
            max_requests_per_minute=per_minute,
            max_requests_per_hour=per_hour,
            conn_id=conn_id,
        )

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
