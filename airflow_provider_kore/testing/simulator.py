"""A local stand-in for Kore.ai's campaign API, for tests, demos and benchmarks.

:class:`KoreSimulator` is a standard-library HTTP/1.1 server (keep-alive, one daemon thread per
connection) bound to ``127.0.0.1`` only. It answers the documented campaign operations (the
four seed calls and the four pipeline calls) with the documented shapes and validates each
request the way the real platform does: the ``auth`` JWT (HS256 or HS512, signed with the
client secret, ``appId`` = client id), the ``iid`` and ``accountId`` headers, the documented
query strings and the JSON body. Campaigns move Ready -> Active (or a campaign's
``start_status``) -> Completed (after a number of status reads or seconds) or Stopped; runs move
``campaignInstanceUpdatedAt``, not ``updatedAt`` (the definition's last update).

Faults (error statuses, ``Retry-After``, late answers, non-JSON bodies, rejected tokens,
connections dropped before or after acting), an outage (:meth:`KoreSimulator.set_outage`) and a
rolling-window rate limit can be switched on from a test, and every request is recorded::

    with KoreSimulator(complete_after_polls=2) as sim:
        os.environ["AIRFLOW_CONN_KORE_DEFAULT"] = sim.airflow_conn_json()
        sim.inject_fault("get_campaign_status", status=503, retry_after=1)
        ...  # run the hook, operator or DAG
        assert sim.status_of("cd-sms-welcome-0001") == "Completed"
        assert sim.count("start_campaign", status_code=200) == 1

Routes (``{streamId}`` and ``{iid}`` must be the simulator's ``stream_id``):

=====================  ======  ==============================================================
operation              method  path
=====================  ======  ==============================================================
get_campaign_status    POST    ``/campaign/api/v2/public/{streamId}/campaign/{campaignId}/status``
get_campaign_contacts  POST    the same path with ``view=contacts`` (paged contact outcomes)
get_campaign           GET     ``/campaign/api/v2/public/{streamId}/campaign/{campaignId}``
start_campaign         POST    ``/campaign/api/v2/public/{streamId}/campaign/{campaignId}``
stop_campaign          POST    ``/api/v2/public/{streamId}/campaign/trigger/{campaignId}``
list_campaigns         POST    ``/campaign/api/v2/public/{streamId}/campaign/getAllCampaignDetails``
create_contact_list    POST    ``/campaign/api/v2/public/{streamId}/campaign/contactList/createContactList``
add_contacts           POST    ``/api/1.1/public/{iid}/campaign/contactList/addContacts``
=====================  ======  ==============================================================

The pipeline calls' state (contact lists, contacts, outcomes) is in
:mod:`airflow_provider_kore.testing.pipeline`.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import jwt
from jwt.algorithms import HMACAlgorithm

from airflow_provider_kore.testing.pipeline import (
    PIPELINE_OPERATIONS,
    PipelineSeeding,
    PipelineState,
    Refusal,
    describe,
)
from airflow_provider_kore.testing.pipeline import iso_now as _iso_now

__all__ = [
    "DEFAULT_CAMPAIGNS",
    "DROPPED",
    "OPERATIONS",
    "RATE_LIMIT_MESSAGE",
    "Fault",
    "KoreSimulator",
    "RequestLog",
    "RequestRecord",
]

log = logging.getLogger(__name__)

#: The operations the simulator serves, named as in the provider's ``api.ENDPOINTS``.
OPERATIONS = ("get_campaign_status", "get_campaign", "start_campaign", "stop_campaign", *PIPELINE_OPERATIONS)
#: Kore.ai's text for an HTTP 429 (sent without a ``Retry-After`` header, as Kore does).
RATE_LIMIT_MESSAGE = "Rate limit for this API has been reached. Please try again later"
#: The only address the simulator listens on.
LOOPBACK = "127.0.0.1"
#: The simulator's default client secret: 64 bytes, so HS512 has a full-length key (PyJWT warns
#: below that). Not a secret of anything real.
DEFAULT_CLIENT_SECRET = "kore-simulator-client-secret-for-local-tests-only-please-change-0"

#: JWT algorithms Kore.ai accepts for an app's client secret.
JWT_ALGORITHMS = ("HS256", "HS512")
CAMPAIGN_TYPES = ("sms", "voice")
#: Statuses from which ``stop`` is accepted.
STOPPABLE_STATUSES = frozenset({"Active", "Paused", "Scheduled"})

#: Seeded when ``campaigns`` is None: ``(campaign_id, campaign_type, name)``, all ``Ready``.
DEFAULT_CAMPAIGNS: tuple[tuple[str, str, str], ...] = (
    ("cd-sms-welcome-0001", "sms", "Welcome SMS Campaign"),
    ("cd-voice-renewal-0001", "voice", "Policy Renewal Voice Campaign"),
    ("cd-sms-followup-0002", "sms", "Follow-up SMS Campaign"),
)

_MAX_BODY = 1024 * 1024
_TOKEN_CACHE_MAX = 10_000
_CAMPAIGN_PATH = re.compile(r"^/campaign/api/v2/public/([^/]+)/campaign/([^/]+?)(/status)?$")
_STOP_PATH = re.compile(r"^/api/v2/public/([^/]+)/campaign/trigger/([^/]+)$")
_LIST_PATH = re.compile(r"^/campaign/api/v2/public/([^/]+)/campaign/getAllCampaignDetails$")
_CREATE_LIST_PATH = re.compile(r"^/campaign/api/v2/public/([^/]+)/campaign/contactList/createContactList$")
#: The older ``api/1.1`` path, with the application id (``iid``) where the others have the stream.
_ADD_CONTACTS_PATH = re.compile(r"^/api/1\.1/public/([^/]+)/campaign/contactList/addContacts$")
#: Operations whose path carries no campaign id.
_NO_CAMPAIGN = frozenset({"list_campaigns", "create_contact_list", "add_contacts"})
#: Operations that need the ``accountId`` query (the documented templates carry it).
_ACCOUNT_QUERY = frozenset(
    {"get_campaign_status", "get_campaign", "stop_campaign", "list_campaigns", "create_contact_list"}
)
#: ``RequestRecord.status_code`` of a request whose connection was dropped without an answer.
DROPPED = 0
_FAULT_MESSAGES = {
    400: "Bad request",
    401: "Invalid or expired token",
    403: "Forbidden",
    404: "Not found",
    429: RATE_LIMIT_MESSAGE,
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}
_HTML_BODY = (
    "<html><head><title>{code} Simulated</title></head>"
    "<body><h1>{code} Simulated gateway page</h1><p>This is not JSON.</p></body></html>"
)


class _QuietHMAC(HMACAlgorithm):
    """HMAC verification without PyJWT's short-key warning (the key is the user's business)."""

    def check_key_length(self, key: bytes) -> str | None:
        """Accept any key length, as Kore.ai does."""
        return None


def _new_jws() -> jwt.PyJWS:
    """A private JWS verifier that knows HS256 and HS512 only."""
    jws = jwt.PyJWS(algorithms=list(JWT_ALGORITHMS))
    for name, digest in (("HS256", HMACAlgorithm.SHA256), ("HS512", HMACAlgorithm.SHA512)):
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, _QuietHMAC(digest))
    return jws


class _Default(enum.Enum):
    """Sentinel type: "use the simulator's setting"."""

    TOKEN = 0


#: Marks a keyword left to the simulator's default (distinct from ``None``, which disables).
DEFAULT = _Default.TOKEN


# ---------------------------------------------------------------------------------------------
# Public records.


@dataclass(frozen=True)
class RequestRecord:
    """One request the simulator received, and what it answered."""

    #: ``time.monotonic()`` when the request arrived.
    time: float
    method: str
    #: The URL path, without the query string.
    path: str
    #: The query string as a dict (the last value wins for a repeated name).
    query: dict[str, str]
    #: Request headers with lower-cased names.
    headers: dict[str, str]
    #: The request body as text ("" when there was none).
    body: str
    #: The matched operation (one of :data:`OPERATIONS`), or None for an unknown route.
    operation: str | None
    #: The campaign id from the path, or None when the path carries none.
    campaign_id: str | None
    #: The HTTP status the simulator answered; :data:`DROPPED` (0) if it closed the connection instead.
    status_code: int

    def __repr__(self) -> str:
        headers = {k: ("***" if k == "auth" else v) for k, v in self.headers.items()}
        return (
            f"RequestRecord(method={self.method!r}, path={self.path!r}, query={self.query!r}, "
            f"operation={self.operation!r}, campaign_id={self.campaign_id!r}, "
            f"status_code={self.status_code}, headers={headers!r}, body={self.body!r})"
        )


class RequestLog(list[RequestRecord]):
    """The simulator's request log: a list of :class:`RequestRecord` that is safe across threads.

    Appends and clears take a lock; iterating walks a snapshot, so a test can read it while
    requests are still arriving.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def append(self, item: RequestRecord) -> None:
        """Add a record (thread-safe)."""
        with self._lock:
            super().append(item)

    def clear(self) -> None:
        """Drop every record (thread-safe)."""
        with self._lock:
            super().clear()

    def snapshot(self) -> list[RequestRecord]:
        """A plain list copy of the records so far."""
        with self._lock:
            return list.copy(self)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.snapshot())


@dataclass
class Fault:
    """A scripted misbehaviour, consumed by the next ``times`` matching requests."""

    operation: str
    status: int | None
    retry_after: str | None = None
    body: Any = None
    non_json: bool = False
    delay: float | None = None
    #: None: every matching request until :meth:`KoreSimulator.clear_faults`.
    times: int | None = 1
    #: Also carry the operation out although the answer is replaced.
    apply_operation: bool = False
    #: ``"before"``: close the connection before reading the request's body (nothing done);
    #: ``"after"``: carry the operation out, then close the connection without an answer.
    drop: str | None = None

    @property
    def replaces_answer(self) -> bool:
        """True if the fault answers instead of the operation (not merely late)."""
        return self.status is not None


@dataclass
class _Campaign:
    campaign_id: str
    name: str
    campaign_type: str
    status: str
    created_at: str
    #: The definition's last update (Kore's pages); runs move it only with ``updated_at_on_run``.
    updated_at: str
    complete_after_polls: int | _Default | None = DEFAULT
    complete_after_seconds: float | _Default | None = DEFAULT
    polls: int = 0
    started: float | None = None
    instance_id: str | None = None
    runs: int = 0
    #: The status a start leaves the campaign in.
    start_status: str = "Active"
    updated_at_on_run: bool | _Default = DEFAULT
    #: ``campaignInstanceUpdatedAt``: the last execution update (start, completion, stop).
    instance_updated_at: str | None = None
    description: str | None = None
    priority: str = "5"
    dialing_mode: str = "Agentless"
    contact_lists: list[str] = field(default_factory=lambda: ["Simulator contacts"])


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float | None = None
    #: Close the connection without answering.
    drop: bool = False


def _json_answer(status: int, payload: Any) -> _Answer:
    return _Answer(status, json.dumps(payload, separators=(",", ":")).encode())


def _error(status: int, msg: str) -> _Answer:
    return _json_answer(status, {"errors": [{"msg": msg, "code": status}]})


# ---------------------------------------------------------------------------------------------
# The HTTP server.


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 2048

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.connections_opened = 0
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn); not needed on loopback.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return bool(client_address) and str(client_address[0]).startswith("127.")

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self.connections_opened += 1
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KoreSimulator/1.0"
    sys_version = ""

    def version_string(self) -> str:
        """The ``Server`` header."""
        return self.server_version

    disable_nagle_algorithm = True
    # Buffer the answer so headers and body leave in one write; idle keep-alive sockets time out.
    wbufsize = 64 * 1024
    timeout = 300
    simulator: KoreSimulator

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (the CLI logs through ``on_request``)."""

    def do_GET(self) -> None:
        """Serve a GET."""
        self._serve("GET")

    def do_POST(self) -> None:
        """Serve a POST."""
        self._serve("POST")

    def do_PUT(self) -> None:
        """Serve a PUT (never a documented method: 404/405)."""
        self._serve("PUT")

    def do_PATCH(self) -> None:
        """Serve a PATCH (never a documented method: 404/405)."""
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        """Serve a DELETE (never a documented method: 404/405)."""
        self._serve("DELETE")

    def do_HEAD(self) -> None:
        """Serve a HEAD (never a documented method: 404/405)."""
        self._serve("HEAD")

    def do_OPTIONS(self) -> None:
        """Serve an OPTIONS (never a documented method: 404/405)."""
        self._serve("OPTIONS")

    def _read_body(self) -> bytes | None:
        """The request body, or None if it cannot be read (the connection is then closed)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > _MAX_BODY:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            return None
        if n < 0 or n > _MAX_BODY:
            return None
        return self.rfile.read(n) if n else b""

    def _serve(self, method: str) -> None:
        arrived = time.monotonic()
        sim = self.simulator
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        dropped = sim._take_drop_before(method, split.path, query)
        if dropped is not None:
            # Kore never read the request: close at once, body unread, nothing done.
            self.close_connection = True
            sim._record(RequestRecord(arrived, method, split.path, query, headers, "", *dropped, DROPPED))
            return
        raw = self._read_body()
        if raw is None:
            self.close_connection = True
            answer = _error(400, "Request body could not be read")
            body_text = ""
        else:
            body_text = raw.decode("utf-8", "replace")
            answer = None
        try:
            answer, operation, campaign_id = sim._process(method, split.path, query, headers, body_text, answer)
        except Exception:
            log.exception("Kore simulator failed on %s %s", method, split.path)
            answer, operation, campaign_id = _error(500, "Internal simulator error"), None, None
        record = RequestRecord(
            time=arrived,
            method=method,
            path=split.path,
            query=query,
            headers=headers,
            body=body_text,
            operation=operation,
            campaign_id=campaign_id,
            status_code=DROPPED if answer.drop else answer.status,
        )
        sim._record(record)
        if answer.delay:
            sim._stopping.wait(answer.delay)
        if answer.drop:
            self.close_connection = True  # the operation was carried out; the answer is lost
            return
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(answer.body)
        except OSError:
            self.close_connection = True


# ---------------------------------------------------------------------------------------------
# The simulator.


class KoreSimulator(PipelineSeeding):
    """A local Kore.ai campaign API on ``http://127.0.0.1:PORT``.

    :param client_id: the JWT app's client id; tokens must carry it as ``appId``.
    :param client_secret: the secret tokens must be signed with (HS256 or HS512).
    :param account_id: the expected ``accountId`` header (and query, where documented).
    :param stream_id: the only stream (bot) id the paths may name.
    :param port: TCP port; 0 picks a free one (read it from :attr:`port` / :attr:`url`).
    :param complete_after_polls: an Active campaign answers ``Completed`` on the N-th status
        read since it was started; None disables.
    :param complete_after_seconds: an Active campaign is ``Completed`` once this many seconds
        have passed since it was started; None disables.
    :param campaigns: the campaigns to seed. None seeds :data:`DEFAULT_CAMPAIGNS`. Otherwise an
        iterable of ids (SMS, Ready) or of dicts of :meth:`add_campaign` keywords with a
        ``campaign_id`` key, or a mapping ``{id: "sms" | "voice" | {keywords}}``.
    :param rate_limit: ``(limit, window_seconds)``: at most ``limit`` requests are served in any
        rolling ``window_seconds``; more are answered 429 (Kore's message, no ``Retry-After``).
    :param host: must be ``127.0.0.1``; anything else is refused.
    :param on_request: called with each :class:`RequestRecord` once it is answered.
    :param updated_at_on_run: whether starts, completions and stops move a campaign's
        ``updatedAt``. Default False: Kore's pages describe ``updatedAt`` as the definition's
        last update; runs move ``campaignInstanceUpdatedAt`` (in the list answer) instead.
    :param keep_contacts: keep every contact added to a list (see :meth:`contact_list`); False
        keeps only counts and the phone numbers duplicates are checked against.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        client_id: str = "kore-sim-client",
        client_secret: str = DEFAULT_CLIENT_SECRET,
        account_id: str = "sim-account-0001",
        stream_id: str = "st-sim-0001",
        port: int = 0,
        complete_after_polls: int | None = 3,
        complete_after_seconds: float | None = None,
        campaigns: Iterable[str | Mapping[str, Any]] | Mapping[str, Any] | None = None,
        rate_limit: tuple[int, float] | None = None,
        host: str = LOOPBACK,
        on_request: Callable[[RequestRecord], None] | None = None,
        updated_at_on_run: bool = False,
        keep_contacts: bool = True,
    ) -> None:
        if host != LOOPBACK:
            raise ValueError(f"the Kore simulator only listens on {LOOPBACK}; refusing host {host!r}")
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be between 0 and 65535; got {port!r}")
        self.client_id = client_id
        self.client_secret = client_secret
        self.account_id = account_id
        self.stream_id = stream_id
        #: Default for campaigns added without their own ``complete_after_polls``.
        self.complete_after_polls = complete_after_polls
        #: Default for campaigns added without their own ``complete_after_seconds``.
        self.complete_after_seconds = complete_after_seconds
        #: Default for campaigns added without their own ``updated_at_on_run``.
        self.updated_at_on_run = updated_at_on_run
        self.on_request = on_request
        self.host = host
        self._requested_port = int(port)
        self._lock = threading.Lock()
        self._campaigns: dict[str, _Campaign] = {}
        self._faults: list[Fault] = []
        self._pipeline = PipelineState(keep_contacts=keep_contacts)
        self._outage: tuple[int, str | None] | None = None
        self._rate_limit: tuple[int, float] | None = None
        self._admitted: deque[float] = deque()
        self._token_cache: dict[str, float | None] = {}
        self._jws = _new_jws()
        self._log = RequestLog()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = False
        if rate_limit is not None:
            self.set_rate_limit(*rate_limit)
        self._seed(campaigns)

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"KoreSimulator({where}, client_id={self.client_id!r}, stream_id={self.stream_id!r})"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> KoreSimulator:
        """Bind ``127.0.0.1:port`` and serve in a background daemon thread; returns ``self``."""
        if self._stopped:
            raise RuntimeError("a stopped KoreSimulator cannot be started again; create a new one")
        if self._server is not None:
            return self
        handler = type("KoreSimulatorHandler", (_Handler,), {"simulator": self})
        self._server = _Server((self.host, self._requested_port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kore-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and any open keep-alive connection."""
        server = self._server
        if server is None or self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_open_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> KoreSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None and not self._stopped

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if self._server is None:
            if self._requested_port:
                return self._requested_port
            raise RuntimeError("the KoreSimulator has not been started; its port is not chosen yet")
        return int(self._server.server_address[1])

    @property
    def server_address(self) -> tuple[str, int]:
        """``(host, port)`` of the listening socket."""
        if self._server is None:
            raise RuntimeError("the KoreSimulator has not been started")
        host, port = self._server.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the platform URL to give a ``kore`` connection."""
        return f"http://{self.host}:{self.port}"

    @property
    def connections_opened(self) -> int:
        """How many TCP connections were accepted (keep-alive reuse keeps this low)."""
        return self._server.connections_opened if self._server is not None else 0

    # -- campaigns ------------------------------------------------------------------------------

    def _seed(self, campaigns: Iterable[str | Mapping[str, Any]] | Mapping[str, Any] | None) -> None:
        if campaigns is None:
            for campaign_id, campaign_type, name in DEFAULT_CAMPAIGNS:
                self.add_campaign(campaign_id, name=name, campaign_type=campaign_type)
            return
        if isinstance(campaigns, Mapping):
            for campaign_id, spec in campaigns.items():
                if isinstance(spec, str):
                    self.add_campaign(campaign_id, campaign_type=spec)
                elif isinstance(spec, Mapping):
                    self.add_campaign(campaign_id, **spec)
                elif spec is None:
                    self.add_campaign(campaign_id)
                else:
                    raise TypeError(f"campaign {campaign_id!r}: expected 'sms', 'voice' or a dict, got {spec!r}")
            return
        for item in campaigns:
            if isinstance(item, str):
                self.add_campaign(item)
            elif isinstance(item, Mapping):
                spec = dict(item)
                self.add_campaign(spec.pop("campaign_id"), **spec)
            else:
                raise TypeError(f"expected a campaign id or a dict of add_campaign keywords, got {item!r}")

    def add_campaign(
        self,
        campaign_id: str,
        *,
        name: str | None = None,
        campaign_type: str = "sms",
        status: str = "Ready",
        complete_after_polls: int | _Default | None = DEFAULT,
        complete_after_seconds: float | _Default | None = DEFAULT,
        start_status: str = "Active",
        updated_at_on_run: bool | _Default = DEFAULT,
        description: str | None = None,
        priority: int | str = 5,
        dialing_mode: str = "Agentless",
        contact_lists: Iterable[str] = ("Simulator contacts",),
        created_at: str | None = None,
    ) -> None:
        """Add (or replace) a campaign.

        ``complete_after_polls`` / ``complete_after_seconds`` default to the simulator's
        settings at the time of each check; pass None to disable either for this campaign.
        ``name`` need not be unique (Kore's are not). ``start_status`` is the status a start
        leaves the campaign in: ``"Active"`` (then completed as configured), or e.g.
        ``"Completed"`` (a small campaign done at once; the start still answers ``Active``),
        ``"Scheduled"``, ``"Paused"``, ``"Preparing"`` or any other string (answered as is).
        ``updated_at_on_run`` overrides the simulator's setting for this campaign.
        ``contact_lists`` names the lists the campaign dials (its outcomes come from their
        contacts unless seeded); ``created_at`` (ISO 8601) is for ``startDate``/``endDate`` tests.
        """
        if not isinstance(campaign_id, str) or not campaign_id or "/" in campaign_id:
            raise ValueError(f"campaign_id must be a non-empty string without '/'; got {campaign_id!r}")
        if campaign_type not in CAMPAIGN_TYPES:
            raise ValueError(f"campaign_type must be 'sms' or 'voice'; got {campaign_type!r}")
        for label, value in (("status", status), ("start_status", start_status)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{label} must be a non-empty string; got {value!r}")
        if isinstance(contact_lists, str):
            raise TypeError("contact_lists must be a list of list names, not one string")
        now = created_at or _iso_now()
        campaign = _Campaign(
            campaign_id=campaign_id,
            name=name or f"Simulated {campaign_type.upper()} Campaign {campaign_id}",
            campaign_type=campaign_type,
            status=status,
            created_at=now,
            updated_at=now,
            complete_after_polls=complete_after_polls,
            complete_after_seconds=complete_after_seconds,
            start_status=start_status,
            updated_at_on_run=updated_at_on_run,
            instance_updated_at=None if status == "Ready" else now,
            description=description,
            priority=str(priority),
            dialing_mode=dialing_mode,
            contact_lists=list(contact_lists),
        )
        if status == "Active":
            self._begin_run(campaign)
        with self._lock:
            self._campaigns[campaign_id] = campaign

    def set_status(self, campaign_id: str, status: str) -> None:
        """Force a campaign's status (any non-empty string, e.g. ``"Paused"`` or ``"Failed"``).

        Setting ``"Active"`` begins a new run: the poll count and the clock restart.
        """
        if not isinstance(status, str) or not status:
            raise ValueError(f"status must be a non-empty string; got {status!r}")
        with self._lock:
            campaign = self._get(campaign_id)
            campaign.status = status
            self._touch(campaign)
            if status == "Active":
                self._begin_run(campaign)

    def status_of(self, campaign_id: str) -> str:
        """A campaign's current status (time-based completion applied; not counted as a poll)."""
        with self._lock:
            campaign = self._get(campaign_id)
            self._advance(campaign, poll=False)
            return campaign.status

    def campaign_info(self, campaign_id: str) -> dict[str, Any]:
        """A snapshot of a campaign's simulated state.

        Keys: ``campaign_id``, ``name``, ``campaign_type``, ``status``, ``polls`` (status reads
        in the current run), ``runs`` (starts so far), ``campaign_instance_id``, ``updated_at``,
        ``instance_updated_at`` (``campaignInstanceUpdatedAt``), ``start_status``.
        """
        with self._lock:
            c = self._get(campaign_id)
            self._advance(c, poll=False)
            return {
                "campaign_id": c.campaign_id,
                "name": c.name,
                "campaign_type": c.campaign_type,
                "status": c.status,
                "polls": c.polls,
                "runs": c.runs,
                "campaign_instance_id": c.instance_id,
                "updated_at": c.updated_at,
                "instance_updated_at": c.instance_updated_at,
                "start_status": c.start_status,
            }

    @property
    def campaign_ids(self) -> list[str]:
        """The ids of all campaigns, in the order they were added."""
        with self._lock:
            return list(self._campaigns)

    def _get(self, campaign_id: str) -> _Campaign:
        try:
            return self._campaigns[campaign_id]
        except KeyError:
            raise KeyError(f"no simulated campaign {campaign_id!r}") from None

    @staticmethod
    def _begin_run(campaign: _Campaign) -> None:
        campaign.polls = 0
        campaign.started = time.monotonic()
        campaign.instance_id = f"cid-{uuid.uuid4()}"
        campaign.runs += 1

    def _advance(self, campaign: _Campaign, *, poll: bool) -> None:
        """Count a status read and complete an Active campaign that is due. Caller holds the lock."""
        if campaign.status != "Active":
            return
        if poll:
            campaign.polls += 1
        polls = campaign.complete_after_polls
        if isinstance(polls, _Default):
            polls = self.complete_after_polls
        seconds = campaign.complete_after_seconds
        if isinstance(seconds, _Default):
            seconds = self.complete_after_seconds
        due = polls is not None and campaign.polls >= polls
        if not due and seconds is not None and campaign.started is not None:
            due = time.monotonic() - campaign.started >= seconds
        if due:
            campaign.status = "Completed"
            self._touch(campaign)

    def _touch(self, campaign: _Campaign) -> str:
        """Record an execution update now; returns the timestamp. Caller holds the lock."""
        now = _iso_now()
        campaign.instance_updated_at = now
        on_run = campaign.updated_at_on_run
        if on_run is True or (isinstance(on_run, _Default) and self.updated_at_on_run):
            campaign.updated_at = now
        return now

    # -- faults and rate limit ------------------------------------------------------------------

    def inject_fault(
        self,
        operation: str,
        *,
        status: int | _Default | None = DEFAULT,
        retry_after: float | str | None = None,
        body: Any = None,
        non_json: bool = False,
        delay: float | None = None,
        times: int | None = 1,
        apply_operation: bool = False,
        drop: str | None = None,
    ) -> Fault:
        """Script a misbehaviour for the next ``times`` requests of ``operation`` (or ``"*"``).

        * ``status`` (default 503): answer this HTTP status instead of carrying the operation
          out, with a Kore-style error body (``status=401`` is a rejected token,
          ``status=429`` Kore's rate-limit answer).
        * ``retry_after``: send a ``Retry-After`` header with this value (seconds or HTTP date).
        * ``body``: the answer body instead of the Kore error: a dict/list (sent as JSON) or
          a str/bytes (sent as is).
        * ``non_json=True``: answer an HTML page (status 200 unless ``status`` is given).
        * ``delay``: answer this many seconds late. With a delay and no status (and no body or
          non_json), the operation happens normally and its normal answer is sent late - for
          client read-timeout tests.
        * ``times``: how many matching requests consume the fault; None: all, until
          :meth:`clear_faults`.
        * ``apply_operation=True``: carry the operation out even though the answer is
          replaced (a 502 after a campaign really started, say).
        * ``drop="after"``: carry the operation out, then close the connection without an
          answer (after ``delay``, if given). ``drop="before"``: close the connection before
          reading the request's body; nothing is done. Logged with status code :data:`DROPPED`.

        A read timeout after Kore acted is ``delay=`` longer than the client's timeout (the
        operation happens at once); a lost answer is ``status=502, apply_operation=True``.

        Faults are consumed in the order they were injected. Returns the :class:`Fault`.
        """
        if operation != "*" and operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {', '.join(OPERATIONS)} or '*'; got {operation!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None for always); got {times!r}")
        if delay is not None and delay < 0:
            raise ValueError(f"delay must not be negative; got {delay!r}")
        if drop is not None:
            if drop not in ("before", "after"):
                raise ValueError(f"drop must be 'before' or 'after'; got {drop!r}")
            if not isinstance(status, _Default) or body is not None or non_json:
                raise ValueError("a dropped connection has no answer: drop= takes no status, body or non_json")
            if drop == "before" and (apply_operation or delay is not None):
                raise ValueError("drop='before' never reads the request: no apply_operation or delay")
            status = None
            delay = delay if delay is not None else 0.0
        resolved: int | None
        if isinstance(status, _Default):
            if non_json:
                resolved = 200
            elif delay is not None and body is None:
                resolved = None
            else:
                resolved = 503
        else:
            resolved = status
        if resolved is None and (body is not None or non_json):
            raise ValueError("a fault with a body or non_json needs a status to answer with")
        if resolved is not None and not 100 <= resolved <= 599:
            raise ValueError(f"status must be an HTTP status code; got {resolved!r}")
        if resolved is None and delay is None:
            raise ValueError("a fault needs a status, a body, non_json or a delay")
        fault = Fault(
            operation=operation,
            status=resolved,
            retry_after=None if retry_after is None else str(retry_after),
            body=body,
            non_json=non_json,
            delay=delay,
            times=times,
            apply_operation=apply_operation or drop == "after",
            drop=drop,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def set_outage(self, down: bool = True, *, status: int = 503, retry_after: float | str | None = None) -> None:
        """Answer every request ``status`` (Kore's error body) until ``set_outage(False)``.

        Unlike a ``"*"`` fault, an outage answers any path (known or not) before the rate limit
        (refused requests do not use the window), and :meth:`clear_faults` leaves it on.
        """
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code; got {status!r}")
        with self._lock:
            self._outage = (status, None if retry_after is None else str(retry_after)) if down else None

    @property
    def outage(self) -> bool:
        """True while :meth:`set_outage` is on."""
        return self._outage is not None

    def clear_faults(self) -> None:
        """Forget every fault not yet consumed."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many injected faults are still waiting to be consumed."""
        with self._lock:
            return len(self._faults)

    def set_rate_limit(self, limit: int | None, window_seconds: float | None = None) -> None:
        """Serve at most ``limit`` requests per rolling ``window_seconds``; ``None`` switches it off.

        Requests over the limit are answered HTTP 429 with Kore's message and no
        ``Retry-After``; refused requests do not count towards the window. Changing the limit
        starts a fresh window.
        """
        if limit is None:
            with self._lock:
                self._rate_limit = None
                self._admitted.clear()
            return
        if window_seconds is None or window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive; got {window_seconds!r}")
        if int(limit) < 1:
            raise ValueError(f"limit must be at least 1; got {limit!r}")
        with self._lock:
            self._rate_limit = (int(limit), float(window_seconds))
            self._admitted.clear()

    @property
    def rate_limit(self) -> tuple[int, float] | None:
        """The current ``(limit, window_seconds)``, or None."""
        return self._rate_limit

    # -- request log ----------------------------------------------------------------------------

    @property
    def requests(self) -> RequestLog:
        """Every request received so far (live, thread-safe), oldest first."""
        return self._log

    def reset_log(self) -> None:
        """Empty the request log (:attr:`connections_opened` keeps counting)."""
        self._log.clear()

    def count(self, operation: str | None = None, status_code: int | None = None) -> int:
        """How many logged requests match ``operation`` and/or ``status_code`` (None: any)."""
        return sum(
            1
            for r in self._log
            if (operation is None or r.operation == operation) and (status_code is None or r.status_code == status_code)
        )

    def max_requests_in_window(
        self, window_seconds: float = 60.0, *, operation: str | None = None, status_code: int | None = None
    ) -> int:
        """The most logged requests that arrived within any rolling ``window_seconds``.

        Counted as the rate limit counts: a request at ``t`` has left the window ending at
        ``t + window_seconds``. Filters as in :meth:`count`; refused (429) requests count too
        unless ``status_code`` says otherwise. Use it to check a client kept to its budget::

            assert sim.max_requests_in_window(60) <= 150
        """
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive; got {window_seconds!r}")
        times = sorted(
            r.time
            for r in self._log
            if (operation is None or r.operation == operation) and (status_code is None or r.status_code == status_code)
        )
        most = 0
        first = 0
        for last, arrived in enumerate(times):
            while times[first] <= arrived - window_seconds:
                first += 1
            most = max(most, last - first + 1)
        return most

    def _record(self, record: RequestRecord) -> None:
        self._log.append(record)
        if self.on_request is not None:
            try:
                self.on_request(record)
            except Exception:
                log.exception("Kore simulator on_request callback failed")

    # -- connection helpers ---------------------------------------------------------------------

    def conn_extra(self) -> dict[str, Any]:
        """The ``kore`` connection extras that point at this simulator."""
        return {"account_id": self.account_id, "stream_id": self.stream_id}

    def airflow_conn_json(self, **extra_overrides: Any) -> str:
        """The JSON form of a ``kore`` connection, e.g. for ``AIRFLOW_CONN_KORE_DEFAULT``."""
        return json.dumps(
            {
                "conn_type": "kore",
                "host": self.url,
                "login": self.client_id,
                "password": self.client_secret,
                "extra": {**self.conn_extra(), **extra_overrides},
            }
        )

    def airflow_conn_uri(self, **extra_overrides: Any) -> str:
        """The URI form of a ``kore`` connection.

        ``kore://CLIENT_ID:SECRET@127.0.0.1:PORT/http?account_id=...&stream_id=...``: the
        ``http`` schema (URI path) tells the hook the platform is plain HTTP. Extras that are
        not all strings are sent as one JSON ``__extra__`` parameter instead.
        """
        extra = {**self.conn_extra(), **extra_overrides}
        if all(isinstance(v, str) for v in extra.values()):
            query = urlencode(extra)
        else:
            query = urlencode({"__extra__": json.dumps(extra)})
        login = quote(self.client_id, safe="")
        password = quote(self.client_secret, safe="")
        return f"kore://{login}:{password}@{self.host}:{self.port}/http?{query}"

    # -- request processing ---------------------------------------------------------------------

    @staticmethod
    def _route(
        method: str, path: str, query: Mapping[str, str]
    ) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
        """``(operation, stream_id, campaign_id, allowed_methods)``; allowed is empty if unknown.

        For ``add_contacts`` the "stream" is the path's application id (``iid``).
        """
        for pattern, name in (
            (_LIST_PATH, "list_campaigns"),
            (_CREATE_LIST_PATH, "create_contact_list"),
            (_ADD_CONTACTS_PATH, "add_contacts"),
        ):
            match = pattern.match(path)
            if match:
                return (name if method == "POST" else None), unquote(match.group(1)), None, ("POST",)
        match = _CAMPAIGN_PATH.match(path)
        if match:
            stream, campaign = unquote(match.group(1)), unquote(match.group(2))
            if match.group(3):
                status_op = "get_campaign_contacts" if query.get("view") == "contacts" else "get_campaign_status"
                return (status_op if method == "POST" else None), stream, campaign, ("POST",)
            operation = {"GET": "get_campaign", "POST": "start_campaign"}.get(method)
            return operation, stream, campaign, ("GET", "POST")
        match = _STOP_PATH.match(path)
        if match:
            stream, campaign = unquote(match.group(1)), unquote(match.group(2))
            return ("stop_campaign" if method == "POST" else None), stream, campaign, ("POST",)
        return None, None, None, ()

    def _admit(self) -> bool:
        """Rolling-window rate limit. Caller holds the lock."""
        if self._rate_limit is None:
            return True
        limit, window = self._rate_limit
        now = time.monotonic()
        while self._admitted and self._admitted[0] <= now - window:
            self._admitted.popleft()
        if len(self._admitted) >= limit:
            return False
        self._admitted.append(now)
        return True

    def _take_fault(self, operation: str, *, drop_before: bool = False) -> Fault | None:
        """Consume the first fault for ``operation`` (only if it drops before reading, if asked).

        Caller holds the lock.
        """
        for index, fault in enumerate(self._faults):
            if fault.operation in ("*", operation):
                if drop_before and fault.drop != "before":
                    return None
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        del self._faults[index]
                return fault
        return None

    def _take_drop_before(self, method: str, path: str, query: Mapping[str, str]) -> tuple[str, str | None] | None:
        """``(operation, campaign_id)`` if this request's next fault drops it unread, else None.

        Such a request is not counted by the rate limit (Kore never read it).
        """
        if not self._faults:  # the common case, without routing twice or taking the lock
            return None
        operation, _, campaign_id, _ = self._route(method, path, query)
        if operation is None:
            return None
        with self._lock:
            if self._outage is not None or self._take_fault(operation, drop_before=True) is None:
                return None
        return operation, campaign_id

    def _process(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: str,
        preset: _Answer | None,
    ) -> tuple[_Answer, str | None, str | None]:
        """Answer one request: ``(answer, operation, campaign_id)``."""
        operation, stream, campaign_id, allowed = self._route(method, path, query)
        with self._lock:
            outage = self._outage
            admitted = outage is not None or self._admit()
            take = admitted and outage is None and operation is not None and preset is None
            fault = self._take_fault(operation) if take and operation is not None else None
        if outage is not None:
            answer = _error(outage[0], _FAULT_MESSAGES.get(outage[0], "Service unavailable"))
            if outage[1] is not None:
                answer.headers["Retry-After"] = outage[1]
            return answer, operation, campaign_id
        if not admitted:
            return _error(429, RATE_LIMIT_MESSAGE), operation, campaign_id
        if preset is not None:
            return preset, operation, campaign_id
        if operation is None:
            if allowed:
                answer = _error(405, f"Method {method} not allowed on this route")
                answer.headers["Allow"] = ", ".join(allowed)
                return answer, None, campaign_id
            return _error(404, "Route not found"), None, None
        assert stream is not None
        if fault is not None and (fault.replaces_answer or fault.drop):
            if fault.apply_operation:
                self._operate(operation, stream, campaign_id, query, headers, body)
            answer = _Answer(DROPPED, b"", drop=True) if fault.drop else self._fault_answer(fault)
        else:
            answer = self._operate(operation, stream, campaign_id, query, headers, body)
        if fault is not None:
            answer.delay = fault.delay
        return answer, operation, campaign_id

    @staticmethod
    def _fault_answer(fault: Fault) -> _Answer:
        status = fault.status if fault.status is not None else 200
        if fault.non_json:
            text = fault.body if isinstance(fault.body, str) else _HTML_BODY.format(code=status)
            answer = _Answer(status, text.encode(), content_type="text/html; charset=utf-8")
        elif fault.body is None:
            answer = _error(status, _FAULT_MESSAGES.get(status, f"Simulated failure (HTTP {status})"))
        elif isinstance(fault.body, bytes):
            answer = _Answer(status, fault.body)
        elif isinstance(fault.body, str):
            answer = _Answer(status, fault.body.encode())
        else:
            answer = _json_answer(status, fault.body)
        if fault.retry_after is not None:
            answer.headers["Retry-After"] = fault.retry_after
        return answer

    def _token_rejected(self, token: str) -> bool:
        """True if ``token`` is not a valid, unexpired JWT of this app.

        Signature and claims are verified once per distinct token string; ``exp`` is checked
        against the clock on every request.
        """
        cache = self._token_cache
        if token in cache:
            exp = cache[token]
        else:
            exp, cacheable = self._verify_token(token)
            if cacheable:
                if len(cache) >= _TOKEN_CACHE_MAX:
                    cache.clear()
                cache[token] = exp
        # PyJWT's rule: a token is expired once exp <= now.
        return exp is None or exp <= time.time()

    def _verify_token(self, token: str) -> tuple[float | None, bool]:
        """``(exp, cacheable)``: ``exp`` of a good token of this app, else None."""
        try:
            payload = self._jws.decode(token, self.client_secret, algorithms=list(JWT_ALGORITHMS))
            claims = json.loads(payload)
        except (jwt.PyJWTError, ValueError):
            return None, True
        if not isinstance(claims, dict) or claims.get("appId") != self.client_id:
            return None, True
        exp, iat = claims.get("exp"), claims.get("iat")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, iat)):
            return None, True
        if float(iat) > time.time():  # type: ignore[arg-type]
            return None, False  # issued in the future: may become valid, so not cached
        return float(exp), True  # type: ignore[arg-type]

    def _operate(
        self,
        operation: str,
        stream: str,
        campaign_id: str | None,
        query: dict[str, str],
        headers: dict[str, str],
        body: str,
    ) -> _Answer:
        """Validate in the real server's order, then carry the operation out."""
        token = headers.get("auth", "").strip()
        if not token:
            return _error(401, "auth header is required")
        if self._token_rejected(token):
            return _error(401, "Invalid or expired token")
        if not headers.get("iid", "").strip():
            return _error(400, "iid header is required")
        account = headers.get("accountid", "").strip()
        if not account:
            return _error(400, "accountId header is required")
        if account != self.account_id:
            return _error(403, "accountId header does not match the app's account")
        if "accountId" in query and query["accountId"] != self.account_id:
            return _error(403, "accountId query parameter does not match the app's account")

        if operation in _ACCOUNT_QUERY and not query.get("accountId"):
            return _error(400, "accountId query parameter is required")
        if operation == "get_campaign_status" and "view" in query and query["view"] != "status":
            return _error(400, "view must be 'status' (or 'contacts' for the contact outcomes)")
        campaign_type: str | None = None
        if operation in ("start_campaign", "stop_campaign"):
            campaign_type = query.get("campaignType")
            if campaign_type is None:
                return _error(400, "campaignType query parameter is required")
            if campaign_type not in CAMPAIGN_TYPES:
                return _error(400, "campaignType must be one of sms, voice")
            expected_trigger = "play" if operation == "start_campaign" else "stop"
            trigger = query.get("trigger")
            if trigger is None:
                return _error(400, "trigger query parameter is required")
            if trigger != expected_trigger:
                return _error(400, f"trigger must be '{expected_trigger}' on this route")
        payload: Any = None
        if operation != "get_campaign":
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                return _error(400, "Request body must be a JSON object")

        if stream != self.stream_id:
            return _error(404, f"Stream not found: no bot with id {stream}")
        try:
            with self._lock:
                if campaign_id is None:
                    return self._operate_on_lists(operation, payload)
                campaign = self._campaigns.get(campaign_id)
                if campaign is None:
                    return _error(404, "Campaign not found")
                if campaign_type is not None and campaign_type != campaign.campaign_type:
                    return _error(
                        400, f"campaignType {campaign_type} does not match the campaign's type {campaign.campaign_type}"
                    )
                return self._operate_on_campaign(operation, campaign, payload)
        except Refusal as refusal:
            return _error(refusal.status, refusal.msg)

    def _operate_on_lists(self, operation: str, payload: dict[str, Any]) -> _Answer:
        """The operations without a campaign in the path. Caller holds the lock."""
        if operation == "list_campaigns":
            for campaign in self._campaigns.values():
                self._advance(campaign, poll=False)
            return _json_answer(200, self._pipeline.list_campaigns(self._campaigns.values(), payload))
        if operation == "create_contact_list":
            return _json_answer(200, self._pipeline.create_contact_list(payload, _iso_now()))
        return _json_answer(200, self._pipeline.add_contacts(payload))

    def _operate_on_campaign(self, operation: str, campaign: _Campaign, payload: Any) -> _Answer:
        """The operations on one campaign. Caller holds the lock."""
        if operation == "get_campaign_status":
            self._advance(campaign, poll=True)
            return _json_answer(
                200,
                {
                    "status": "success",
                    "data": {"id": campaign.campaign_id, "status": campaign.status, "name": campaign.name},
                },
            )
        self._advance(campaign, poll=False)
        if operation == "get_campaign_contacts":
            return _json_answer(200, self._pipeline.campaign_contacts(campaign, payload))
        if operation == "get_campaign":
            return _json_answer(
                200,
                {
                    "status": "success",
                    "message": f"Campaign {campaign.name} retrieved successfully",
                    "data": self._campaign_document(campaign),
                },
            )
        if operation == "start_campaign":
            if campaign.status == "Active":
                return _error(400, "Campaign is already active")
            self._begin_run(campaign)
            campaign.status = campaign.start_status
            now = self._touch(campaign)
            # A campaign done at once was Active when Kore answered.
            answered = "Active" if campaign.status == "Completed" else campaign.status
            return _json_answer(200, {"status": answered, "message": "Campaign Started", "updatedAt": now})
        # stop_campaign
        if campaign.status not in STOPPABLE_STATUSES:
            return _error(400, "Campaign is not active")
        campaign.status = "Stopped"
        now = self._touch(campaign)
        if campaign.instance_id is None:
            campaign.instance_id = f"cid-{uuid.uuid4()}"
        return _json_answer(
            200,
            {
                "status": "Stopped",
                "message": "Campaign Stopped",
                "updatedAt": now,
                "campaignInstanceId": campaign.instance_id,
            },
        )

    @staticmethod
    def _campaign_document(c: _Campaign) -> dict[str, Any]:
        """The ``data`` object of the get-campaign answer, in Kore's documented shape."""
        voice = c.campaign_type == "voice"
        return {
            "_id": c.campaign_id,
            "name": c.name,
            "lname": c.name.lower(),
            "description": describe(c),
            "dncLists": {"id": "cl-sim-dnc-0001", "name": "Simulator DNC list"},
            "priority": c.priority,
            "dialingMode": c.dialing_mode if voice else "Basic",
            "dialingStrategy": {
                "callerId": {"phoneNumber": "+15550100000"},
                "callingHours": {
                    "frequency": "WEEKLY",
                    "timezone": "UTC",
                    "days": [
                        {"start": "9:00 AM", "end": "6:00 PM", "day": day} for day in ("MO", "TU", "WE", "TH", "FR")
                    ],
                },
                "dialingOrder": "FIFO",
                "maxAttemptsPerRecord": 3 if voice else 1,
            },
            "experienceFlow": "cf-sim-flow-0001",
            "status": c.status,
            "createdAt": c.created_at,
            "updatedAt": c.updated_at,
            "schedule": {"isSchedulingEnabled": False, "isRecurrenceEnabled": False},
            "contactLists": list(c.contact_lists),  # names, as the page documents
        }
