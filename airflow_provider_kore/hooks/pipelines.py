"""The pipeline calls of :class:`~airflow_provider_kore.hooks.kore.KoreHook`: campaigns by name, contact
lists in, contact outcomes out; every request goes through the hook's ``_request``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import api, ids
from airflow_provider_kore.exceptions import (
    KoreBadResponseError,
    KoreCampaignAmbiguousError,
    KoreCampaignNotFoundError,
    KoreConfigurationError,
    KoreOutcomeUnknownError,
)

if TYPE_CHECKING:
    from airflow_provider_kore.config import KoreConnectionConfig

PAGE = 100  # rows per page of campaigns and of contact outcomes (Kore's maximum for those)
DEFAULT_BATCH_SIZE = 500  # contacts per add-contacts request: Kore documents no limit, so bodies stay small


class KorePipelineCalls:
    """List and find campaigns, read contact outcomes, create contact lists and add contacts."""

    if TYPE_CHECKING:  # provided by KoreHook

        @property
        def config(self) -> KoreConnectionConfig: ...

        def _request(self, operation: str, **kwargs: Any) -> dict[str, Any]: ...

    def list_campaigns(
        self, campaign_type: str, statuses: str | Iterable[str] | None = None, stream_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every campaign of ``campaign_type`` (optionally only those in ``statuses``), page by page: Kore's rows
        with ``id`` set (voice rows carry ``_id``, SMS rows ``id``)."""
        body: dict[str, Any] = {
            "type": ids.validate_campaign_type(campaign_type),
            "limit": PAGE,
            "sortBy": {"createdAt": "asc"},  # oldest first: a campaign created meanwhile lands on a later page
        }
        wanted = api.campaign_statuses(statuses)
        if wanted:
            body["filters"] = {"status": wanted}
        pages = self._pages(
            "list_campaigns", lambda page: {**body, "page": page, "skip": (page - 1) * PAGE}, stream_id=stream_id
        )
        return _with_ids(pages)

    def find_campaign(self, name: str, campaign_type: str, stream_id: str | None = None) -> str:
        """The id of the one ``campaign_type`` campaign named exactly ``name`` (else
        :class:`KoreCampaignNotFoundError` or :class:`KoreCampaignAmbiguousError`)."""
        if not isinstance(name, str) or not name.strip():
            raise KoreConfigurationError(f"campaign_name must be a non-empty string; got {name!r}")
        kind = ids.validate_campaign_type(campaign_type)
        found = [row["id"] for row in self.list_campaigns(kind, stream_id=stream_id) if row.get("name") == name]
        where = f"{kind} campaign named {name!r} in stream {self.config.resolve_stream_id(stream_id)[0]!r}"
        if not found:
            raise KoreCampaignNotFoundError(f"Kore.ai has no {where}", operation="list_campaigns")
        if len(found) > 1:
            raise KoreCampaignAmbiguousError(
                f"Kore.ai has {len(found)} of {where} ({', '.join(found[:5])}): pass campaign_id instead"
            )
        return str(found[0])

    def iter_campaign_contacts(self, campaign_id: str, stream_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every contact outcome of the campaign, read lazily one page (of 100) at a time."""
        read = {"campaign_id": campaign_id, "stream_id": stream_id}
        return self._pages("get_campaign_contacts", lambda page: {"limit": PAGE, "page": page}, **read)

    def create_contact_list(
        self, name: str, description: str, allow_duplicates: bool = False, stream_id: str | None = None
    ) -> dict[str, Any]:
        """Create a contact list filled through the API (``source: passiveApi``); returns its ``data``. A lost
        answer raises :class:`KoreOutcomeUnknownError` (the list may exist)."""
        body = {
            "name": ids.validate_text("name", name, ids.MAX_LIST_NAME_LENGTH),
            "description": ids.validate_text("description", description, ids.MAX_LIST_DESCRIPTION_LENGTH),
            "source": "passiveApi",
            "allowDuplicates": bool(allow_duplicates),
        }
        subject = f"contact list {name!r}"
        return self._request("create_contact_list", stream_id=stream_id, body=body, subject=subject)["data"]

    def add_contacts(
        self,
        contact_list_name: str,
        contacts: Iterable[Mapping[str, Any]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        stream_id: str | None = None,
    ) -> int:
        """Add contacts to a list, in order, ``batch_size`` per request; returns how many were sent.

        ``contacts`` is read lazily; each batch is checked (:func:`~airflow_provider_kore.api.contact_payload`)
        before it is sent. Kore queues the add: it is not done on return. A lost answer raises
        :class:`KoreOutcomeUnknownError`, never re-sent.
        """
        name = ids.validate_text("contact_list_name", contact_list_name, ids.MAX_LIST_NAME_LENGTH)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise KoreConfigurationError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        self.config.resolve_stream_id(stream_id)
        rows, sent = iter(contacts), 0
        while True:
            batch = []
            for number, contact in enumerate(itertools.islice(rows, batch_size), start=sent + 1):
                try:
                    batch.append(api.contact_payload(contact))
                except KoreConfigurationError as exc:
                    raise KoreConfigurationError(f"contact {number}: {exc}") from None
            if not batch:
                return sent
            body = {"contact_list_name": name, "data": batch}
            try:
                self._request("add_contacts", stream_id=stream_id, body=body, subject=f"contact list {name!r}")
            except KoreOutcomeUnknownError as exc:
                exc.args = (f"{exc.args[0]} ({sent} contacts were sent before this batch of {len(batch)})",)
                raise
            sent += len(batch)

    def _pages(
        self, operation: str, body_for: Callable[[int], dict[str, Any]], **params: Any
    ) -> Iterator[dict[str, Any]]:
        """The ``results`` of each page while Kore says there are more; bad input raises here, not lazily."""
        api.prepare(self.config, operation, body=body_for(1), **params)

        def read() -> Iterator[dict[str, Any]]:
            for page in itertools.count(1):
                data = self._request(operation, body=body_for(page), **params)["data"]
                results = data.get("results")
                if not isinstance(results, list) or not all(isinstance(row, dict) for row in results):
                    what = f"Kore.ai {api.ENDPOINTS[operation].label}: page {page} has no results list"
                    raise KoreBadResponseError(what, operation=operation, campaign_id=params.get("campaign_id"))
                yield from results
                more, total = data.get("hasMore"), data.get("totalPages")
                if more is None:  # the contacts page has no hasMore: totalPages, else a short page, ends it
                    more = page < total if isinstance(total, int) else len(results) >= body_for(page)["limit"]
                if not results or not more:
                    return

        return read()


def _with_ids(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Campaign rows with ``id`` set; a row a moved page boundary repeats is dropped."""
    seen: set[str] = set()
    for row in rows:
        campaign_id = row.get("_id") or row.get("id")
        if not isinstance(campaign_id, str) or not campaign_id:
            raise KoreBadResponseError(f"Kore.ai list campaigns: a row without _id or id: {row.get('name')!r}")
        if campaign_id not in seen:
            seen.add(campaign_id)
            yield {**row, "id": campaign_id}
