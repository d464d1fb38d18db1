"""The shared API layer: endpoint table, input validation, connection parsing, answer mapping, backoff."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from airflow_provider_kore import api, engine
from airflow_provider_kore.config import KoreConnectionConfig, normalise_base_url
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreBadResponseError,
    KoreConfigurationError,
    KoreNotFoundError,
    KoreRateLimitError,
    KoreServerError,
    Secrets,
)

SECRET = "s3cr3t-client-secret-value"


def make_conn(**overrides):
    fields = {
        "host": "https://platform.kore.ai",
        "login": "cs-client-1",
        "password": SECRET,
        "port": None,
        "schema": None,
        "extra_dejson": {"account_id": "acc-1", "stream_id": "st-1"},
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


def config(**extra):
    base = {"account_id": "acc-1", "stream_id": "st-1"}
    base.update(extra)
    return KoreConnectionConfig.from_connection(make_conn(extra_dejson=base), conn_id="kore_unit")


# -- the endpoint table -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "campaign_type", "method", "url"),
    [
        (
            "get_campaign_status",
            None,
            "POST",
            "https://platform.kore.ai/campaign/api/v2/public/st-1/campaign/cd-1/status?accountId=acc-1&view=status",
        ),
        (
            "get_campaign",
            None,
            "GET",
            "https://platform.kore.ai/campaign/api/v2/public/st-1/campaign/cd-1?accountId=acc-1",
        ),
        (
            "start_campaign",
            "sms",
            "POST",
            "https://platform.kore.ai/campaign/api/v2/public/st-1/campaign/cd-1?campaignType=sms&trigger=play",
        ),
        (
            "start_campaign",
            "voice",
            "POST",
            "https://platform.kore.ai/campaign/api/v2/public/st-1/campaign/cd-1?campaignType=voice&trigger=play",
        ),
        (
            "stop_campaign",
            "voice",
            "POST",
            "https://platform.kore.ai/api/v2/public/st-1/campaign/trigger/cd-1?accountId=acc-1&campaignType=voice&trigger=stop",
        ),
        (
            "stop_campaign",
            "sms",
            "POST",
            "https://platform.kore.ai/api/v2/public/st-1/campaign/trigger/cd-1?accountId=acc-1&campaignType=sms&trigger=stop",
        ),
        (
            "list_campaigns",
            None,
            "POST",
            "https://platform.kore.ai/campaign/api/v2/public/st-1/campaign/getAllCampaignDetails?accountId=acc-1",
        ),
        (
            "get_campaign_contacts",
            None,
            "POST",
            "https://platform.kore.ai/campaign/api/v2/public/st-1/campaign/cd-1/status?view=contacts",
        ),
        (
            "create_contact_list",
            None,
            "POST",
            "https://platform.kore.ai/campaign/api/v2/public/st-1/campaign/contactList/createContactList?accountId=acc-1",
        ),
        (
            "add_contacts",
            None,
            "POST",
            "https://platform.kore.ai/api/1.1/public/st-1/campaign/contactList/addContacts",
        ),
    ],
)
def test_prepare_follows_the_documented_pages(operation, campaign_type, method, url):
    call = api.prepare(config(), operation, campaign_id="cd-1", campaign_type=campaign_type)
    assert call.method == method
    assert call.url == url
    assert call.headers["iid"] == "st-1"
    assert call.headers["accountId"] == "acc-1"
    assert "auth" not in call.headers  # the signer adds it at send time
    if method == "POST":
        assert call.headers["Content-Type"] == "application/json"
        assert call.body == b"{}"
    else:
        assert call.body is None
        assert "Content-Type" not in call.headers


def test_a_body_is_sent_as_compact_json():
    call = api.prepare(config(), "list_campaigns", body={"type": "sms", "page": 2})
    assert json.loads(call.body) == {"type": "sms", "page": 2}
    assert b" " not in call.body


def test_operation_stream_id_overrides_connection_and_feeds_iid():
    call = api.prepare(config(), "get_campaign_status", campaign_id="cd-1", stream_id="st-other")
    assert "/public/st-other/" in call.url
    assert call.headers["iid"] == "st-other"
    assert (call.stream_id, call.stream_source) == ("st-other", "the task")


def test_explicit_iid_extra_wins_over_stream_id():
    call = api.prepare(config(iid="st-app"), "get_campaign", campaign_id="cd-1", stream_id="st-other")
    assert call.headers["iid"] == "st-app"
    add = api.prepare(config(iid="st-app"), "add_contacts", body={})
    assert "/api/1.1/public/st-app/" in add.url


def test_a_prepared_call_says_what_it_is_about_and_where_its_stream_came_from():
    call = api.prepare(config(), "get_campaign_status", campaign_id="cd-1")
    assert call.where == "Kore.ai get campaign status for campaign 'cd-1'"
    assert call.subject == "campaign 'cd-1'"
    assert (call.stream_id, call.stream_source) == ("st-1", "connection 'kore_unit'")
    assert (call.base_url, call.conn_id) == ("https://platform.kore.ai", "kore_unit")
    named = api.prepare(config(), "create_contact_list", body={}, subject="contact list 'x'")
    assert named.where == "Kore.ai create contact list for contact list 'x'"
    assert api.prepare(config(), "list_campaigns").where == "Kore.ai list campaigns"


def test_only_calls_that_must_not_run_twice_are_not_idempotent():
    # A lost answer to one of these is never re-sent (the engine's "unknown outcome").
    assert {op for op, ep in api.ENDPOINTS.items() if not ep.idempotent} == {
        "start_campaign",
        "create_contact_list",
        "add_contacts",
    }


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("cd/1", "'/'"),
        ("cd?1", "'?'"),
        ("cd#1", "'#'"),
        ("cd%2F1", "'%'"),
        ("cd 1", "' '"),
        ("cd\t1", "'\\t'"),
        ("cd\x001", "'\\x00'"),
        ("cd..1", "'..'"),
        ("c" * 129, "at most 128"),
        (123, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_bad_campaign_ids_are_refused_naming_the_field(value, fragment):
    with pytest.raises(KoreConfigurationError) as err:
        api.prepare(config(), "get_campaign_status", campaign_id=value)
    assert "campaign_id" in str(err.value)
    assert fragment in str(err.value)


def test_bad_stream_id_is_refused():
    with pytest.raises(KoreConfigurationError, match="stream_id"):
        api.prepare(config(), "get_campaign_status", campaign_id="cd-1", stream_id="st/../x")


@pytest.mark.parametrize("campaign_type", ["email", "", None, 3, "SMS "])
def test_campaign_type_is_checked(campaign_type):
    if campaign_type == "SMS ":  # case and surrounding blanks are forgiven
        assert api.prepare(config(), "start_campaign", campaign_id="cd-1", campaign_type=campaign_type).url.endswith(
            "campaignType=sms&trigger=play"
        )
        return
    with pytest.raises(KoreConfigurationError, match="campaign_type"):
        api.prepare(config(), "start_campaign", campaign_id="cd-1", campaign_type=campaign_type)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"host": None}, "host"),
        ({"host": "  "}, "host"),
        ({"host": "ftp://platform.kore.ai"}, "http(s)"),
        ({"login": None}, "Client ID"),
        ({"login": " "}, "Client ID"),
        ({"password": None}, "Client Secret"),
        ({"password": ""}, "Client Secret"),
        ({"extra_dejson": {"stream_id": "st-1"}}, "account_id"),
        ({"extra_dejson": {"account_id": " ", "stream_id": "st-1"}}, "account_id"),
        ({"extra_dejson": {"account_id": "a", "jwt_algorithm": "RS256"}}, "jwt_algorithm"),
        ({"extra_dejson": {"account_id": "a", "timeout": "soon"}}, "timeout"),
        ({"extra_dejson": {"account_id": "a", "timeout": 0}}, "timeout"),
        ({"extra_dejson": {"account_id": "a", "max_retries": -1}}, "max_retries"),
        ({"extra_dejson": {"account_id": "a", "jwt_per_request": "maybe"}}, "jwt_per_request"),
    ],
)
def test_incomplete_connections_are_refused_naming_the_field_and_the_connection(overrides, field):
    with pytest.raises(KoreConfigurationError) as err:
        KoreConnectionConfig.from_connection(make_conn(**overrides), conn_id="kore_prod")
    assert field in str(err.value)
    assert str(err.value).startswith("kore connection 'kore_prod': ")
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout", "nan"),
        ("timeout", "inf"),
        ("timeout", float("nan")),
        ("timeout", float("inf")),
        ("max_retries", float("inf")),
        ("max_requests_per_minute", "Infinity"),
        ("max_requests_per_hour", float("nan")),
    ],
)
def test_numeric_extras_must_be_finite(key, value):
    with pytest.raises(KoreConfigurationError, match=rf"^kore connection 'kore_prod': connection extra {key} "):
        KoreConnectionConfig.from_connection(
            make_conn(extra_dejson={"account_id": "a", key: value}), conn_id="kore_prod"
        )


def test_configuration_errors_name_the_connections_own_id_when_none_is_given():
    with pytest.raises(KoreConfigurationError, match=r"^kore connection 'kore_eu': .*account_id"):
        KoreConnectionConfig.from_connection(make_conn(extra_dejson={}, conn_id="kore_eu"))


def test_missing_stream_id_everywhere_is_refused_before_any_request():
    cfg = KoreConnectionConfig.from_connection(make_conn(extra_dejson={"account_id": "a"}), conn_id="kore_eu")
    with pytest.raises(KoreConfigurationError, match="stream_id") as err:
        api.prepare(cfg, "get_campaign_status", campaign_id="cd-1")
    assert "'kore_eu'" in str(err.value)
    assert "/public/st-9/" in api.prepare(cfg, "get_campaign_status", campaign_id="cd-1", stream_id="st-9").url


def test_resolve_stream_id_says_where_the_id_came_from():
    cfg = config()
    assert cfg.resolve_stream_id(None) == ("st-1", "connection 'kore_unit'")
    assert cfg.resolve_stream_id("st-2") == ("st-2", "the task")


@pytest.mark.parametrize(
    ("host", "port", "schema", "expected"),
    [
        ("https://platform.kore.ai", None, None, "https://platform.kore.ai"),
        ("https://platform.kore.ai/", None, None, "https://platform.kore.ai"),
        ("platform.kore.ai", None, None, "https://platform.kore.ai"),
        ("bots.example.com:8443", None, None, "https://bots.example.com:8443"),
        ("127.0.0.1", 8765, "http", "http://127.0.0.1:8765"),
        ("http://127.0.0.1:8765", None, None, "http://127.0.0.1:8765"),
        ("https://kore.example.com/gateway/", None, None, "https://kore.example.com/gateway"),
    ],
)
def test_host_forms(host, port, schema, expected):
    assert normalise_base_url(host, port=port, schema=schema) == expected


def test_extras_parse_strings_from_the_form():
    cfg = KoreConnectionConfig.from_connection(
        make_conn(
            extra_dejson={
                "account_id": "acc-9",
                "stream_id": "st-9",
                "timeout": "12.5",
                "max_retries": "2",
                "jwt_algorithm": "hs512",
                "jwt_per_request": "true",
                "verify": "false",
                "iid": "",
                "max_requests_per_minute": "120",
            }
        )
    )
    assert cfg.account_id == "acc-9"
    assert cfg.timeout == 12.5
    assert cfg.max_retries == 2
    assert cfg.jwt_algorithm == "HS512"
    assert cfg.jwt_per_request is True
    assert cfg.verify is False
    assert cfg.iid is None
    assert cfg.max_requests_per_minute == 120
    assert cfg.max_requests_per_hour is None


def test_airflow_2_prefixed_extras_are_not_read():
    # Airflow 3 stores extras unprefixed; the old ``extra__kore__`` keys are ignored (issue 13).
    with pytest.raises(KoreConfigurationError, match="account_id"):
        KoreConnectionConfig.from_connection(
            make_conn(extra_dejson={"extra__kore__account_id": "acc-9", "stream_id": "st-9"})
        )


def test_verify_may_name_a_ca_bundle():
    assert config(verify="/etc/ssl/certs/ca.pem").verify == "/etc/ssl/certs/ca.pem"


def test_config_repr_hides_the_secret():
    assert SECRET not in repr(config())


# -- answers ------------------------------------------------------------------------------------


def status_call(**kwargs):
    return api.prepare(config(), "get_campaign_status", campaign_id="cd-1", **kwargs)


def test_good_status_answer_is_returned():
    body = {"status": "success", "data": {"id": "cd-1", "status": "Ready", "name": "n"}}
    assert api.parse_answer(status_call(), 200, json.dumps(body).encode()) == body


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400, KoreApiError),
        (401, KoreAuthError),
        (403, KoreAuthError),
        (404, KoreNotFoundError),
        (409, KoreApiError),
        (429, KoreRateLimitError),
        (500, KoreServerError),
        (502, KoreServerError),
        (503, KoreServerError),
    ],
)
def test_error_answers_map_to_one_exception_each(code, cls):
    body = json.dumps({"errors": [{"msg": "Campaign is not active", "code": code}]})
    with pytest.raises(cls) as err:
        api.parse_answer(status_call(), code, body)
    exc = err.value
    assert type(exc) is cls
    assert exc.http_status == code
    assert exc.kore_message == "Campaign is not active"
    assert exc.operation == "get_campaign_status"
    for part in ("get campaign status", "'cd-1'", f"HTTP {code}", "Campaign is not active"):
        assert part in str(exc)


def test_api_errors_carry_the_campaign_id():
    # KoreApiError declares a public campaign_id; the answer's call knows it (it was set before the rewrite).
    with pytest.raises(KoreNotFoundError) as err:
        api.parse_answer(status_call(), 404, json.dumps({"errors": [{"msg": "Campaign not found"}]}))
    assert err.value.campaign_id == "cd-1"


@pytest.mark.parametrize("code", [401, 403])
def test_auth_errors_name_the_connection_and_its_credential_fields(code):
    with pytest.raises(KoreAuthError) as err:
        api.parse_answer(status_call(), code, json.dumps({"errors": [{"msg": "Invalid token"}]}))
    message = str(err.value)
    assert "'kore_unit'" in message
    assert "Client ID / Client Secret" in message


@pytest.mark.parametrize(("stream_id", "source"), [(None, "connection 'kore_unit'"), ("st-9", "the task")])
def test_not_found_names_the_stream_id_and_where_it_came_from(stream_id, source):
    call = status_call(stream_id=stream_id)
    with pytest.raises(KoreNotFoundError) as err:
        api.parse_answer(call, 404, json.dumps({"errors": [{"msg": "Not found"}]}))
    assert f"stream id {call.stream_id!r} from {source}" in str(err.value)


def test_transient_flags():
    assert KoreRateLimitError.transient
    assert KoreServerError.transient
    assert not KoreAuthError.transient
    assert not KoreNotFoundError.transient
    assert not KoreApiError.transient


def test_a_429s_retry_after_reaches_the_pacer():
    exchange = engine.Exchange(status_call(), secrets=Secrets(SECRET), max_retries=0)
    decision = exchange.decide(engine.Answer(429, b"{}", retry_after="7"), 0.0)
    assert decision.action == "requeue"
    assert (decision.pacing, decision.retry_after) == ("rate_limited", 7.0)


def test_200_with_status_failure_is_an_error_carrying_kores_message():
    body = json.dumps({"status": "failure", "errors": [{"msg": "Invalid campaign", "code": 4001}]})
    with pytest.raises(KoreApiError, match="Invalid campaign"):
        api.parse_answer(status_call(), 200, body)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("<html><body>Bad gateway</body></html>", "non-JSON"),
        ("", "empty body"),
        ("[1, 2]", "not an object"),
        ('{"status": "success"}', "'data'"),
        ('{"status": "success", "data": {"id": "cd-1"}}', "data.status"),
    ],
)
def test_bad_answers_are_clear_errors_not_decode_errors(body, fragment):
    with pytest.raises(KoreBadResponseError) as err:
        api.parse_answer(status_call(), 200, body)
    assert fragment in str(err.value)


def test_non_json_error_page_keeps_the_status_and_a_snippet():
    with pytest.raises(KoreServerError) as err:
        api.parse_answer(status_call(), 502, b"<html>upstream down</html>")
    assert "HTTP 502" in str(err.value)
    assert "upstream down" in str(err.value)


def test_secrets_and_jwts_in_kores_text_are_redacted():
    token = "eyJhbGciOiJIUzI1NiJ9.eyJhcHBJZCI6ImNzIn0.c2lnbmF0dXJlLXZhbHVl"
    body = json.dumps({"errors": [{"msg": f"bad token {token} for secret {SECRET}"}]})
    with pytest.raises(KoreAuthError) as err:
        api.parse_answer(status_call(), 401, body, secrets=Secrets(SECRET))
    assert token not in str(err.value)
    assert SECRET not in str(err.value)
    assert token not in (err.value.kore_message or "")


# -- backoff (engine) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), ("0", 0.0), ("1.5", 1.5), (None, None), ("", None), ("soon", None), ("-3", 0.0)],
)
def test_parse_retry_after_seconds(value, expected):
    assert engine.parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    assert engine.parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_backoff_grows_is_jittered_and_capped():
    delays = [engine.backoff(n) for n in range(1, 9)]
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert engine.backoff(1) <= 1.0
    assert 4.0 <= engine.backoff(4) <= 8.0
    assert 15.0 <= engine.backoff(8) <= 30.0


def test_retry_after_is_a_floor_and_capped():
    assert engine.backoff(1, retry_after=20.0) >= 20.0
    assert engine.backoff(1, retry_after=3600.0) == 120.0


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (400, "fail"),
        (403, "fail"),
        (404, "fail"),
        (409, "fail"),
        (429, "requeue"),
        (500, "retry"),
        (501, "fail"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
    ],
)
def test_only_429_and_5xx_gateway_errors_are_sent_again(code, action):
    exchange = engine.Exchange(status_call(), secrets=Secrets(SECRET), max_retries=2)
    assert exchange.decide(engine.Answer(code, b"{}"), 0.0).action == action


def test_a_read_is_not_retried_past_max_retries():
    exchange = engine.Exchange(status_call(), secrets=Secrets(SECRET), max_retries=2)
    actions = [exchange.decide(engine.Answer(503, b"{}"), 0.0).action for _ in range(3)]
    assert actions == ["retry", "retry", "fail"]


def test_secrets_never_show_in_a_repr():
    """Tracebacks that print locals (Airflow 3.0's dag.test) show the holder, not the values."""
    secrets = Secrets(SECRET, None, "")
    assert SECRET not in repr(secrets)
    assert SECRET not in repr({"secrets": secrets})
    assert secrets.redact(f"echo {SECRET}") == "echo ***"
