"""The simulator's pipeline calls: list campaigns, contact outcomes, contact lists and contacts.

Kept apart from :mod:`airflow_provider_kore.testing.simulator`, which owns HTTP, auth, faults and
the rate limit: this module holds the state these four calls read and write and answers each
one as ``(http_status, payload)`` from an already authenticated request, raising
:class:`Refusal` for a request Kore would refuse. The simulator calls it with its lock held.

The shapes follow Kore.ai's pages (see ``kore-api-pipeline-notes.md``); where the pages are
silent the choices are named in the docstrings below (default page sizes, how ``skip`` and
``page`` combine, the error for a duplicate list name).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any, Protocol

#: The pipeline operations, named as in the provider's ``api.ENDPOINTS``.
PIPELINE_OPERATIONS = ("list_campaigns", "get_campaign_contacts", "create_contact_list", "add_contacts")
#: The contact fields a list maps (``createContactList`` answers them as ``mapping``).
CONTACT_FIELDS = ("firstName", "lastName", "phoneNumber", "timeZone", "uniqueId", "contactPriority")
#: The fields of one contact outcome row (``status?view=contacts``).
OUTCOME_FIELDS = (
    "phoneNumber",
    "uniqueId",
    "dialerOutcome",
    "numberOfAttemptsSoFar",
    "botSessionId",
    "agentDispositionCodes",
    "botOutboundStatus",
    "botOutboundStatusDetail",
)
LIST_NAME_MAX = 48
LIST_DESCRIPTION_MAX = 256
#: The whole answer of ``addContacts``: the add is queued, not done.
ADD_CONTACTS_MESSAGE = "Adding contacts to public list is in progress"
#: ``getAllCampaignDetails`` page size when the body names none (not documented).
DEFAULT_LIST_LIMIT = 10
#: ``status?view=contacts`` page size when the body names none (not documented); the maximum is 100.
DEFAULT_CONTACTS_LIMIT = 10
MAX_CONTACTS_LIMIT = 100
_SORT_KEYS = {"name": "name", "createdAt": "created_at", "updatedAt": "updated_at"}

#: Generated outcome rows cycle through these:
#: ``(dialerOutcome, agentDispositionCodes, botOutboundStatus, botOutboundStatusDetail)``.
_OUTCOME_PROFILES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("completed", ("System Generated",), "userHangUp", "user_hangup"),
    ("completed", ("Interested", "Callback Requested"), "agentHangUp", "agent_hangup"),
    ("busy", ("System Generated",), "notConnected", "busy"),
    ("noAnswer", (), "notConnected", "no_answer"),
    ("failed", ("System Generated",), "notConnected", "invalid_number"),
)


def iso_now() -> str:
    """Now as ISO 8601 with milliseconds and a ``Z``, as Kore writes ``updatedAt``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Refusal(Exception):
    """A request Kore would refuse: answered ``status`` with ``{"errors": [{"msg", "code"}]}``."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class CampaignLike(Protocol):
    """What the pipeline calls read of a simulated campaign."""

    campaign_id: str
    name: str
    campaign_type: str
    status: str
    description: str | None
    priority: str
    dialing_mode: str
    contact_lists: list[str]
    created_at: str
    updated_at: str
    instance_updated_at: str | None
    runs: int


def describe(campaign: CampaignLike) -> str:
    """The campaign's description (a default when it was seeded without one)."""
    return campaign.description or (
        f"Simulated {campaign.campaign_type.upper()} campaign served by the local Kore.ai simulator."
    )


def campaign_row(c: CampaignLike) -> dict[str, Any]:
    """One ``getAllCampaignDetails`` result: voice rows carry ``_id``, SMS rows ``id``."""
    voice = c.campaign_type == "voice"
    row: dict[str, Any] = {"_id": c.campaign_id} if voice else {"id": c.campaign_id}
    row.update(
        name=c.name,
        description=describe(c),
        status=c.status,
        priority=c.priority,
        createdAt=c.created_at,
        updatedAt=c.updated_at,
        campaignInstanceUpdatedAt=c.instance_updated_at,
        schedule={"isSchedulingEnabled": False, "isRecurrenceEnabled": False},
        contactLists=list(c.contact_lists),
        dncLists=[{"id": "cl-sim-dnc-0001", "name": "Simulator DNC list"}],
    )
    if voice:
        row.update(dialingMode=c.dialing_mode, connection="Simulator Outbound Queue")
    else:
        row.update(
            totalMessagesSent=0 if c.runs == 0 else 1,
            campaignExecutionType="NORMAL",
            format="simple",
            message={"text": f"Hello from {c.name}"},
        )
    return row


def generated_outcome(index: int) -> dict[str, Any]:
    """The ``index``-th (0-based) generated outcome row: deterministic, cheap, varied."""
    outcome, codes, status, detail = _OUTCOME_PROFILES[index % len(_OUTCOME_PROFILES)]
    return {
        "phoneNumber": f"+1555{index:07d}",
        "uniqueId": "" if index % 10 == 9 else f"sim-contact-{index:07d}",
        "dialerOutcome": outcome,
        "numberOfAttemptsSoFar": 1 + index % 3,
        "botSessionId": f"bs-sim-{index:010d}",
        "agentDispositionCodes": list(codes),
        "botOutboundStatus": status,
        "botOutboundStatusDetail": detail,
    }


def outcome_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A seeded outcome row with every documented field (missing ones empty)."""
    if not isinstance(row, Mapping) or not row.get("phoneNumber"):
        raise ValueError(f"an outcome row needs a phoneNumber; got {row!r}")
    full: dict[str, Any] = {
        "phoneNumber": "",
        "uniqueId": "",
        "dialerOutcome": "",
        "numberOfAttemptsSoFar": 0,
        "botSessionId": "",
        "agentDispositionCodes": [],
        "botOutboundStatus": "",
        "botOutboundStatusDetail": "",
    }
    full.update(row)
    return full


class _Generated:
    """``count`` generated outcome rows, built on demand (100,000 rows cost nothing until read)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def rows(self, start: int, stop: int) -> list[dict[str, Any]]:
        return [generated_outcome(i) for i in range(max(0, start), min(stop, self.count))]


class _Seeded:
    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.items = list(rows)

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, start: int, stop: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.items[start:stop]]


@dataclass
class ContactList:
    """A contact list and the contacts added to it, in the order they were accepted."""

    list_id: str
    name: str
    description: str
    allow_duplicates: bool
    created_at: str
    contacts: list[dict[str, Any]] = field(default_factory=list)
    phones: set[str] = field(default_factory=set)
    count: int = 0

    def document(self) -> dict[str, Any]:
        """The list as ``createContactList`` answers it."""
        return {
            "_id": self.list_id,
            "name": self.name,
            "description": self.description,
            "status": "Ready",
            "source": "passiveApi",
            "allowDuplicates": self.allow_duplicates,
            "totalRecordCount": self.count,
            "listType": "call",
            "mapping": {name: name for name in CONTACT_FIELDS},
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
        }


def _whole(body: Mapping[str, Any], key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    """``body[key]`` as a whole number in range, else a 400 naming it."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum and value > maximum):
        bounds = f"{minimum}-{maximum}" if maximum else f">= {minimum}"
        raise Refusal(400, f"{key} must be an integer {bounds}; got {value!r}")
    return value


def _timestamp(body: Mapping[str, Any], key: str) -> datetime | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise Refusal(400, f"{key} must be an ISO 8601 timestamp; got {value!r}") from None


def _string_set(filters: Mapping[str, Any], key: str) -> set[str] | None:
    value = filters.get(key)
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise Refusal(400, f"filters.{key} must be an array")
    return {str(v).lower() for v in value}


class PipelineState:
    """Contact lists, their contacts and campaigns' contact outcomes.

    :param keep_contacts: keep every added contact (for :meth:`contacts`); False keeps only the
        counts and the phone numbers duplicates are checked against, for loads of many contacts.
    """

    def __init__(self, *, keep_contacts: bool = True) -> None:
        self.keep_contacts = keep_contacts
        self.lists: dict[str, ContactList] = {}
        self.outcomes: dict[str, _Generated | _Seeded] = {}

    # -- seeding and reading (the simulator wraps these in its lock) -----------------------------

    def add_list(self, name: str, description: str, allow_duplicates: bool, now: str) -> ContactList:
        if name in self.lists:
            raise Refusal(409, f"Contact list with name '{name}' already exists")
        contact_list = ContactList(f"cl-{uuid.uuid4()}", name, description, allow_duplicates, now)
        self.lists[name] = contact_list
        return contact_list

    def get_list(self, name: str) -> ContactList:
        try:
            return self.lists[name]
        except KeyError:
            raise KeyError(f"no simulated contact list {name!r}") from None

    def set_outcomes(self, campaign_id: str, rows: Iterable[Mapping[str, Any]] | int | None) -> None:
        if isinstance(rows, bool):
            raise TypeError("rows must be outcome rows, a count or None")
        if rows is None:
            self.outcomes.pop(campaign_id, None)
        elif isinstance(rows, int):
            if rows < 0:
                raise ValueError(f"count must not be negative; got {rows!r}")
            self.outcomes[campaign_id] = _Generated(rows)
        else:
            self.outcomes[campaign_id] = _Seeded([outcome_row(r) for r in rows])

    def outcome_source(self, campaign: CampaignLike) -> _Generated | _Seeded:
        """Seeded or generated rows; else one row per contact of the campaign's lists once it ran.

        Derived rows have an empty ``dialerOutcome`` while the campaign is Active (in progress)
        and a generated outcome otherwise.
        """
        seeded = self.outcomes.get(campaign.campaign_id)
        if seeded is not None:
            return seeded
        if campaign.runs == 0:
            return _Seeded([])
        running = campaign.status.lower() == "active"
        rows: list[dict[str, Any]] = []
        for name in campaign.contact_lists:
            contact_list = self.lists.get(name)
            for contact in contact_list.contacts if contact_list else ():
                row = generated_outcome(len(rows))
                row.update(phoneNumber=contact["phoneNumber"], uniqueId=str(contact.get("uniqueId") or ""))
                if running:
                    row.update(dialerOutcome="", numberOfAttemptsSoFar=0, agentDispositionCodes=[])
                    row.update(botOutboundStatus="", botOutboundStatusDetail="")
                rows.append(row)
        return _Seeded(rows)

    # -- the four operations ---------------------------------------------------------------------

    def list_campaigns(self, campaigns: Iterable[CampaignLike], body: Mapping[str, Any]) -> dict[str, Any]:
        """``getAllCampaignDetails``: filter, sort, page.

        ``skip`` is the offset when given; otherwise ``page`` (from 1) counts pages of ``limit``.
        Without ``sortBy`` the campaigns come in the order they were added.
        """
        campaign_type = body.get("type")
        if campaign_type not in ("voice", "sms"):
            raise Refusal(400, f"type is required and must be one of voice, sms; got {campaign_type!r}")
        limit = _whole(body, "limit", DEFAULT_LIST_LIMIT, minimum=1)
        page = _whole(body, "page", 1, minimum=1)
        skip = _whole(body, "skip", (page - 1) * limit, minimum=0)
        filters = body.get("filters", {})
        filters = {} if filters is None else filters
        if not isinstance(filters, Mapping):
            raise Refusal(400, "filters must be an object")
        statuses = _string_set(filters, "status")
        priorities = _string_set(filters, "priority")
        modes = _string_set(filters, "dialingMode")
        start, end = _timestamp(body, "startDate"), _timestamp(body, "endDate")
        sort_by = body.get("sortBy", {})
        sort_by = {} if sort_by is None else sort_by
        if not isinstance(sort_by, Mapping) or any(
            k not in _SORT_KEYS or str(v).lower() not in ("asc", "desc") for k, v in sort_by.items()
        ):
            raise Refusal(400, f"sortBy must map name, createdAt or updatedAt to asc or desc; got {sort_by!r}")

        chosen = []
        for c in campaigns:
            if c.campaign_type != campaign_type:
                continue
            if statuses is not None and c.status.lower() not in statuses:
                continue
            if priorities is not None and c.priority.lower() not in priorities:
                continue
            if modes is not None and (campaign_type != "voice" or c.dialing_mode.lower() not in modes):
                continue
            if start or end:
                created = datetime.fromisoformat(c.created_at.replace("Z", "+00:00"))
                if (start and created < start) or (end and created > end):
                    continue
            chosen.append(c)
        for key, direction in reversed(list(sort_by.items())):  # stable: the first key sorts last
            chosen.sort(key=attrgetter(_SORT_KEYS[key]), reverse=str(direction).lower() == "desc")
        total = len(chosen)
        results = [campaign_row(c) for c in chosen[skip : skip + limit]]
        return {
            "status": "success",
            "data": {
                "results": results,
                "skip": skip,
                "limit": limit,
                "hasMore": skip + len(results) < total,
                "totalPages": -(-total // limit),
                "totalResults": total,
            },
        }

    def campaign_contacts(self, campaign: CampaignLike, body: Mapping[str, Any]) -> dict[str, Any]:
        """``status?view=contacts``: one page of the campaign's contact outcomes."""
        page = _whole(body, "page", 1, minimum=1)
        limit = _whole(body, "limit", DEFAULT_CONTACTS_LIMIT, minimum=1, maximum=MAX_CONTACTS_LIMIT)
        source = self.outcome_source(campaign)
        total = len(source)
        return {
            "status": "success",
            "data": {
                "results": source.rows((page - 1) * limit, page * limit),
                "page": page,
                "limit": limit,
                "totalPages": -(-total // limit),
                "totalResults": total,
            },
        }

    def create_contact_list(self, body: Mapping[str, Any], now: str) -> dict[str, Any]:
        """``createContactList``; a name already taken is refused 409."""
        name, description, source = body.get("name"), body.get("description"), body.get("source")
        if not isinstance(name, str) or not name.strip():
            raise Refusal(400, "name is required")
        if len(name) > LIST_NAME_MAX:
            raise Refusal(400, f"name must be at most {LIST_NAME_MAX} characters; got {len(name)}")
        if not isinstance(description, str) or not description.strip():
            raise Refusal(400, "description is required")
        if len(description) > LIST_DESCRIPTION_MAX:
            raise Refusal(400, f"description must be at most {LIST_DESCRIPTION_MAX} characters; got {len(description)}")
        if source != "passiveApi":
            raise Refusal(400, f"source is required and must be 'passiveApi'; got {source!r}")
        allow = body.get("allowDuplicates", False)
        if not isinstance(allow, bool):
            raise Refusal(400, f"allowDuplicates must be a boolean; got {allow!r}")
        return {"status": "success", "data": self.add_list(name, description, allow, now).document()}

    def add_contacts(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``addContacts``: every contact checked before any is stored; duplicates dropped unless allowed."""
        name, data = body.get("contact_list_name"), body.get("data")
        if not isinstance(name, str) or not name:
            raise Refusal(400, "contact_list_name is required")
        if not isinstance(data, list) or not data:
            raise Refusal(400, "data must be a non-empty array of contacts")
        for index, contact in enumerate(data):
            if not isinstance(contact, dict):
                raise Refusal(400, f"data[{index}] must be an object")
            phone = contact.get("phoneNumber")
            if not isinstance(phone, str) or not phone.strip():
                raise Refusal(400, f"data[{index}].phoneNumber is required")
        contact_list = self.lists.get(name)
        if contact_list is None:
            raise Refusal(404, f"Contact list '{name}' not found")
        for contact in data:
            phone = contact["phoneNumber"]
            if not contact_list.allow_duplicates:
                if phone in contact_list.phones:
                    continue
                contact_list.phones.add(phone)
            contact_list.count += 1
            if self.keep_contacts:
                contact_list.contacts.append(dict(contact))
        return {"message": ADD_CONTACTS_MESSAGE}


class PipelineSeeding:
    """:class:`~airflow_provider_kore.testing.KoreSimulator`'s methods to seed and read contact
    lists and contact outcomes (a mixin: it uses the simulator's lock and state)."""

    _lock: threading.Lock
    _pipeline: PipelineState
    _campaigns: dict[str, Any]

    def add_contact_list(self, name: str, *, description: str = "Seeded list", allow_duplicates: bool = False) -> str:
        """Create a contact list as ``createContactList`` would (no length checks); returns its ``_id``."""
        with self._lock:
            try:
                return self._pipeline.add_list(name, description, allow_duplicates, iso_now()).list_id
            except Refusal as refusal:
                raise ValueError(refusal.msg) from None

    @property
    def contact_list_names(self) -> list[str]:
        """The names of all contact lists, in the order they were created."""
        with self._lock:
            return list(self._pipeline.lists)

    def contact_list(self, name: str) -> list[dict[str, Any]]:
        """Copies of the contacts stored in list ``name``, in the order they were accepted.

        Empty when the simulator was made with ``keep_contacts=False``; raises KeyError for an
        unknown list.
        """
        with self._lock:
            return [dict(c) for c in self._pipeline.get_list(name).contacts]

    def contact_list_info(self, name: str) -> dict[str, Any]:
        """The list as ``createContactList`` answers it, with the current ``totalRecordCount``."""
        with self._lock:
            return self._pipeline.get_list(name).document()

    def set_contact_outcomes(self, campaign_id: str, rows: Iterable[Mapping[str, Any]] | int | None) -> None:
        """Seed the contact outcomes ``status?view=contacts`` pages through for a campaign.

        ``rows``: dicts with at least ``phoneNumber`` (missing documented fields are filled
        empty); or a count N, for N deterministic generated rows built on demand (100,000 cost
        nothing until read); or None to go back to outcomes derived from the contacts of the
        campaign's ``contact_lists`` (none before its first start).
        """
        with self._lock:
            if campaign_id not in self._campaigns:
                raise KeyError(f"no simulated campaign {campaign_id!r}")
            self._pipeline.set_outcomes(campaign_id, rows)

    def contact_outcomes(self, campaign_id: str) -> list[dict[str, Any]]:
        """Every outcome row the campaign would page through now, in order."""
        with self._lock:
            if campaign_id not in self._campaigns:
                raise KeyError(f"no simulated campaign {campaign_id!r}")
            source = self._pipeline.outcome_source(self._campaigns[campaign_id])
            return source.rows(0, len(source))
