"""KoreHook's pipeline calls against requests-mock: paging, ids, names, batches, validation first."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from airflow_provider_kore import api, pacing
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreBadResponseError,
    KoreCampaignAmbiguousError,
    KoreCampaignNotFoundError,
    KoreConfigurationError,
    KoreNotFoundError,
    KoreOutcomeUnknownError,
)
from airflow_provider_kore.hooks.kore import KoreHook
from tests.test_hook import BASE, FakeClock, set_conn

LIST_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/getAllCampaignDetails?accountId=acc-1"
CONTACTS_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/cd-1/status?view=contacts"
CREATE_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/contactList/createContactList?accountId=acc-1"
ADD_URL = f"{BASE}/api/1.1/public/st-1/campaign/contactList/addContacts"
ADD_ANSWER = {"message": "Adding contacts to public list is in progress"}


@pytest.fixture
def hook(monkeypatch):
    """A hook on the test connection, with a fake pacing clock: backoff and pacing waits are recorded, not slept."""
    fake = FakeClock()
    monkeypatch.setattr(pacing, "clock", fake)
    pacing.reset_sync_pacers()
    set_conn(monkeypatch)
    h = KoreHook()
    h._sleep = fake.sleep
    yield h
    pacing.reset_sync_pacers()


def page_of_campaigns(rows, *, more):
    return {"status": "success", "data": {"results": rows, "hasMore": more, "totalPages": 9, "totalResults": 99}}


def page_of_contacts(page, count, total_pages):
    rows = [{"phoneNumber": f"+1555{page:03d}{i:04d}", "dialerOutcome": "completed"} for i in range(count)]
    return {"status": "success", "data": {"results": rows, "page": page, "limit": 100, "totalPages": total_pages}}


def bodies(requests_mock):
    return [json.loads(req.body) for req in requests_mock.request_history]


# -- the endpoint table ---------------------------------------------------------------------------


def test_pipeline_urls_follow_the_pages_as_written(monkeypatch):
    set_conn(monkeypatch)
    config = api.KoreConnectionConfig.load("kore_default")
    assert api.prepare(config, "get_campaign_contacts", campaign_id="cd-1", body={"page": 1}).url == CONTACTS_URL
    assert api.prepare(config, "list_campaigns", body={"type": "sms"}).url == LIST_URL
    assert api.prepare(config, "create_contact_list", body={"name": "n"}).url == CREATE_URL
    add = api.prepare(config, "add_contacts", body={"contact_list_name": "n", "data": []}, subject="contact list 'n'")
    assert add.url == ADD_URL
    assert add.headers["iid"] == "st-1"
    assert add.where == "Kore.ai add contacts for contact list 'n'"


def test_iid_extra_goes_in_the_add_contacts_path(monkeypatch):
    set_conn(monkeypatch, iid="st-app-9")
    config = api.KoreConnectionConfig.load("kore_default")
    assert "/api/1.1/public/st-app-9/" in api.prepare(config, "add_contacts", body={}).url


def test_reads_are_idempotent_creates_and_adds_are_not():
    assert api.ENDPOINTS["list_campaigns"].idempotent
    assert api.ENDPOINTS["get_campaign_contacts"].idempotent
    assert not api.ENDPOINTS["create_contact_list"].idempotent
    assert not api.ENDPOINTS["add_contacts"].idempotent


# -- list / find ------------------------------------------------------------------------------------


def test_list_campaigns_reads_every_page_and_sets_the_id(hook, requests_mock):
    requests_mock.post(
        LIST_URL,
        [
            {"json": page_of_campaigns([{"_id": "cd-v1", "name": "A"}, {"_id": "cd-v2", "name": "B"}], more=True)},
            {"json": page_of_campaigns([{"id": "cd-s3", "name": "C"}, {"_id": "cd-v2", "name": "B"}], more=False)},
        ],
    )
    rows = list(hook.list_campaigns("Voice", statuses=["active", "Paused"]))
    assert [(row["id"], row["name"]) for row in rows] == [("cd-v1", "A"), ("cd-v2", "B"), ("cd-s3", "C")]
    first, second = bodies(requests_mock)
    assert first["type"] == "voice"
    assert first["filters"] == {"status": ["Active", "Paused"]}
    assert (first["page"], first["skip"], second["page"], second["skip"]) == (1, 0, 2, 100)
    assert first["limit"] == 100


def test_list_campaigns_is_lazy(hook, requests_mock):
    requests_mock.post(LIST_URL, json=page_of_campaigns([{"_id": "cd-1", "name": "A"}], more=True))
    rows = hook.list_campaigns("sms")
    assert requests_mock.call_count == 0
    assert next(rows)["id"] == "cd-1"
    assert requests_mock.call_count == 1


@pytest.mark.parametrize("statuses", [["Running"], "bogus", 3, []])
def test_list_campaigns_refuses_unknown_statuses_before_any_request(hook, requests_mock, statuses):
    with pytest.raises(KoreConfigurationError, match="statuses"):
        hook.list_campaigns("sms", statuses=statuses)
    assert requests_mock.call_count == 0


def test_find_campaign_returns_the_one_exact_match(hook, requests_mock):
    rows = [{"_id": "cd-1", "name": "Renewal"}, {"_id": "cd-2", "name": "renewal"}, {"_id": "cd-3", "name": "Other"}]
    requests_mock.post(LIST_URL, json=page_of_campaigns(rows, more=False))
    assert hook.find_campaign("Renewal", "voice") == "cd-1"


def test_a_task_stream_id_is_where_campaigns_are_listed_and_found(hook, requests_mock):
    """``campaign_name=`` with a task's ``stream_id`` looks the name up in that bot, not the connection's."""
    other = requests_mock.post(
        LIST_URL.replace("/st-1/", "/st-other/"),
        json=page_of_campaigns([{"_id": "cd-9", "name": "Renewal"}], more=False),
    )
    assert hook.find_campaign("Renewal", "voice", stream_id="st-other") == "cd-9"
    assert [row["id"] for row in hook.list_campaigns("voice", stream_id="st-other")] == ["cd-9"]
    assert other.call_count == 2


def test_find_campaign_none_is_a_not_found_naming_the_name(hook, requests_mock):
    requests_mock.post(LIST_URL, json=page_of_campaigns([{"_id": "cd-1", "name": "Other"}], more=False))
    with pytest.raises(KoreCampaignNotFoundError, match="no voice campaign named 'Renewal'") as err:
        hook.find_campaign("Renewal", "voice")
    assert isinstance(err.value, KoreNotFoundError)


def test_find_campaign_several_is_ambiguous_naming_the_name_and_ids(hook, requests_mock):
    rows = [{"id": "cd-1", "name": "Renewal"}, {"id": "cd-2", "name": "Renewal"}]
    requests_mock.post(LIST_URL, json=page_of_campaigns(rows, more=False))
    with pytest.raises(KoreCampaignAmbiguousError, match=r"'Renewal'.*cd-1, cd-2"):
        hook.find_campaign("Renewal", "sms")


@pytest.mark.parametrize(("name", "kind"), [("", "sms"), (None, "sms"), ("A", "email")])
def test_find_campaign_checks_its_input_before_any_request(hook, requests_mock, name, kind):
    with pytest.raises(KoreConfigurationError):
        hook.find_campaign(name, kind)
    assert requests_mock.call_count == 0


def test_a_row_without_any_id_is_a_bad_response(hook, requests_mock):
    requests_mock.post(LIST_URL, json=page_of_campaigns([{"name": "A"}], more=False))
    with pytest.raises(KoreBadResponseError, match="without _id or id"):
        list(hook.list_campaigns("sms"))


# -- contact outcomes ---------------------------------------------------------------------------


def test_contacts_are_read_lazily_page_by_page(hook, requests_mock):
    requests_mock.post(CONTACTS_URL, [{"json": page_of_contacts(p, 100 if p < 3 else 7, 3)} for p in (1, 2, 3)])
    rows = hook.iter_campaign_contacts("cd-1")
    assert requests_mock.call_count == 0
    for _ in range(100):
        next(rows)
    assert requests_mock.call_count == 1
    assert sum(1 for _ in rows) == 107
    assert [body["page"] for body in bodies(requests_mock)] == [1, 2, 3]
    assert all(body["limit"] == 100 for body in bodies(requests_mock))
    assert all("accountId" not in req.url for req in requests_mock.request_history)


def test_contacts_without_total_pages_end_on_a_short_page(hook, requests_mock):
    full, short = page_of_contacts(1, 100, 0), page_of_contacts(2, 3, 0)
    for page in (full, short):
        del page["data"]["totalPages"]
    requests_mock.post(CONTACTS_URL, [{"json": full}, {"json": short}])
    assert len(list(hook.iter_campaign_contacts("cd-1"))) == 103


def test_an_empty_campaign_is_one_request(hook, requests_mock):
    requests_mock.post(CONTACTS_URL, json=page_of_contacts(1, 0, 0))
    assert list(hook.iter_campaign_contacts("cd-1")) == []
    assert requests_mock.call_count == 1


def test_bad_campaign_id_is_refused_before_iterating(hook, requests_mock):
    with pytest.raises(KoreConfigurationError, match="campaign_id"):
        hook.iter_campaign_contacts("cd/1")
    assert requests_mock.call_count == 0


def test_a_page_without_results_is_a_bad_response(hook, requests_mock):
    requests_mock.post(CONTACTS_URL, json={"status": "success", "data": {"page": 1}})
    with pytest.raises(KoreBadResponseError, match="page 1"):
        list(hook.iter_campaign_contacts("cd-1"))


# -- create list / add contacts -----------------------------------------------------------------


def test_create_contact_list_sends_the_documented_body(hook, requests_mock):
    data = {"_id": "cl-1", "name": "Nightly", "status": "Ready"}
    requests_mock.post(CREATE_URL, json={"status": "success", "data": data})
    assert hook.create_contact_list("Nightly", "Tonight's calls", allow_duplicates=True) == data
    assert bodies(requests_mock) == [
        {"name": "Nightly", "description": "Tonight's calls", "source": "passiveApi", "allowDuplicates": True}
    ]


@pytest.mark.parametrize(
    ("name", "description", "fragment"),
    [("n" * 49, "d", "at most 48"), ("", "d", "name"), ("n", "d" * 257, "at most 256"), ("n", None, "description")],
)
def test_create_contact_list_checks_limits_before_any_request(hook, requests_mock, name, description, fragment):
    with pytest.raises(KoreConfigurationError, match=fragment):
        hook.create_contact_list(name, description)
    assert requests_mock.call_count == 0


def test_a_lost_create_answer_is_not_sent_again(hook, requests_mock):
    requests_mock.post(CREATE_URL, exc=requests.exceptions.ReadTimeout)
    with pytest.raises(KoreOutcomeUnknownError, match="not sent again"):
        hook.create_contact_list("Nightly", "d")
    assert requests_mock.call_count == 1


def test_a_refused_create_is_an_api_error_naming_the_list(hook, requests_mock):
    requests_mock.post(CREATE_URL, status_code=400, json={"errors": [{"msg": "name already exists"}]})
    with pytest.raises(KoreApiError, match=r"create contact list for contact list 'Nightly'.*already exists"):
        hook.create_contact_list("Nightly", "d")


def contacts(count):
    for i in range(count):
        yield {"phoneNumber": f"+1 (555) 000-{i:04d}", "firstName": f"F{i}", "lastName": "", "contactPriority": 2}


def test_add_contacts_sends_in_order_in_batches_each_once(hook, requests_mock):
    requests_mock.post(ADD_URL, json=ADD_ANSWER)
    assert hook.add_contacts("Nightly", contacts(7), batch_size=3) == 7
    sent = bodies(requests_mock)
    assert [len(body["data"]) for body in sent] == [3, 3, 1]
    assert {body["contact_list_name"] for body in sent} == {"Nightly"}
    numbers = [row["phoneNumber"] for body in sent for row in body["data"]]
    assert numbers == [f"+15550000{i:03d}" for i in range(7)]
    assert sent[0]["data"][0] == {"phoneNumber": "+15550000000", "firstName": "F0", "contactPriority": 2}
    assert requests_mock.request_history[0].url == ADD_URL  # no query


def test_add_contacts_streams_the_iterable(hook, requests_mock):
    pulled = []

    def rows():
        for i in range(10):
            pulled.append(i)
            yield {"phoneNumber": f"5550000{i:03d}"}

    def on_add(request, context):
        # When a batch is sent, no row of a later batch has been read yet.
        assert len(pulled) <= len(bodies(requests_mock)) * 4 + 1
        return ADD_ANSWER

    requests_mock.post(ADD_URL, json=on_add)
    assert hook.add_contacts("Nightly", rows(), batch_size=4) == 10
    assert requests_mock.call_count == 3


def test_nothing_to_add_sends_nothing(hook, requests_mock):
    assert hook.add_contacts("Nightly", [], batch_size=2) == 0
    assert requests_mock.call_count == 0


@pytest.mark.parametrize(
    ("name", "batch_size", "fragment"), [("n" * 49, 10, "at most 48"), ("n", 0, "batch_size"), ("n", 2.5, "batch_size")]
)
def test_add_contacts_checks_its_arguments_before_any_request(hook, requests_mock, name, batch_size, fragment):
    with pytest.raises(KoreConfigurationError, match=fragment):
        hook.add_contacts(name, contacts(3), batch_size=batch_size)
    assert requests_mock.call_count == 0


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"phoneNumber": ""}, "no usable phoneNumber"),
        ({"phoneNumber": "call me"}, "no usable phoneNumber"),
        ({"firstName": "A"}, "no usable phoneNumber"),
        ({"phoneNumber": "5550001", "email": "a@b"}, "unknown contact fields"),
        ({"phoneNumber": "5550001", "firstName": ["A"]}, "text or a number"),
        ("5550001", "mapping"),
    ],
)
def test_a_bad_contact_stops_the_batch_before_it_is_sent(hook, requests_mock, bad, fragment):
    requests_mock.post(ADD_URL, json=ADD_ANSWER)
    rows = [{"phoneNumber": "5550001"}, {"phoneNumber": "5550002"}, bad, {"phoneNumber": "5550003"}]
    with pytest.raises(KoreConfigurationError, match=f"contact 3: .*{fragment}"):
        hook.add_contacts("Nightly", rows, batch_size=2)
    assert [len(body["data"]) for body in bodies(requests_mock)] == [2]


def test_a_lost_add_answer_is_not_sent_again_and_says_how_many_went(hook, requests_mock):
    requests_mock.post(ADD_URL, [{"json": ADD_ANSWER}, {"exc": requests.exceptions.ConnectionError("reset")}])
    with pytest.raises(KoreOutcomeUnknownError, match="2 contacts were sent before this batch of 2"):
        hook.add_contacts("Nightly", contacts(5), batch_size=2)
    assert requests_mock.call_count == 2


def test_a_gateway_error_on_add_is_not_retried(hook, requests_mock):
    requests_mock.post(ADD_URL, status_code=502, text="bad gateway")
    with pytest.raises(KoreOutcomeUnknownError):
        hook.add_contacts("Nightly", contacts(1))
    assert requests_mock.call_count == 1


def test_a_503_on_add_is_a_refusal_and_is_retried(hook, requests_mock):
    requests_mock.post(ADD_URL, [{"status_code": 503, "headers": {"Retry-After": "1"}}, {"json": ADD_ANSWER}])
    assert hook.add_contacts("Nightly", contacts(1)) == 1
    assert requests_mock.call_count == 2


def test_reads_are_retried_on_a_gateway_error(hook, requests_mock):
    requests_mock.post(CONTACTS_URL, [{"status_code": 502}, {"json": page_of_contacts(1, 1, 1)}])
    assert len(list(hook.iter_campaign_contacts("cd-1"))) == 1
    assert requests_mock.call_count == 2


def test_every_pipeline_request_is_signed(hook, requests_mock):
    requests_mock.post(ADD_URL, json=ADD_ANSWER)
    hook.add_contacts("Nightly", contacts(1))
    request = requests_mock.request_history[0]
    assert request.headers["auth"].startswith("eyJ")
    assert request.headers["accountId"] == "acc-1"
    assert dict(parse_qsl(urlsplit(request.url).query)) == {}
