"""The shared API layer: endpoint table, input validation, connection parsing, answer mapping, retries."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from airflow_provider_kore import api
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
    return api.KoreConnectionConfig.from_connection(make_conn(extra_dejson=base))


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
    ],
)
def test_prepare_follows_the_documented_pages(operation, campaign_type, method, url):
    call = api.prepare(config(), operation, "cd-1", campaign_type=campaign_type)
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


def test_stop_page_path_has_no_leading_campaign_segment():
    assert api.ENDPOINTS["stop_campaign"].path.startswith("/api/v2/public/")
    odd = {"stop_campaign", "add_contacts"}  # add contacts is an older /api/1.1 page
    assert all(ep.path.startswith("/campaign/") for op, ep in api.ENDPOINTS.items() if op not in odd)


def test_operation_stream_id_overrides_connection_and_feeds_iid():
    call = api.prepare(config(), "get_campaign_status", "cd-1", stream_id="st-other")
    assert "/public/st-other/" in call.url
    assert call.headers["iid"] == "st-other"


def test_explicit_iid_extra_wins_over_stream_id():
    call = api.prepare(config(iid="st-app"), "get_campaign", "cd-1", stream_id="st-other")
    assert call.headers["iid"] == "st-app"


def test_start_create_list_and_add_contacts_are_not_idempotent():
    not_idempotent = {op for op, ep in api.ENDPOINTS.items() if not ep.idempotent}
    assert not_idempotent == {"start_campaign", "create_contact_list", "add_contacts"}


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
        api.prepare(config(), "get_campaign_status", value)
    assert "campaign_id" in str(err.value)
    assert fragment in str(err.value)


def test_bad_stream_id_is_refused():
    with pytest.raises(KoreConfigurationError, match="stream_id"):
        api.prepare(config(), "get_campaign_status", "cd-1", stream_id="st/../x")


@pytest.mark.parametrize("campaign_type", ["email", "", None, 3, "SMS "])
def test_campaign_type_is_checked(campaign_type):
    if campaign_type == "SMS ":  # case and surrounding blanks are forgiven
        assert api.prepare(config(), "start_campaign", "cd-1", campaign_type=campaign_type).url.endswith(
            "campaignType=sms&trigger=play"
        )
        return
    with pytest.raises(KoreConfigurationError, match="campaign_type"):
        api.prepare(config(), "start_campaign", "cd-1", campaign_type=campaign_type)


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
def test_incomplete_connections_are_refused_naming_the_field(overrides, field):
    with pytest.raises(KoreConfigurationError) as err:
        api.KoreConnectionConfig.from_connection(make_conn(**overrides))
    assert field in str(err.value)
    assert SECRET not in str(err.value)


def test_missing_stream_id_everywhere_is_refused_before_any_request():
    cfg = api.KoreConnectionConfig.from_connection(make_conn(extra_dejson={"account_id": "a"}))
    with pytest.raises(KoreConfigurationError, match="stream_id"):
        api.prepare(cfg, "get_campaign_status", "cd-1")
    assert "/public/st-9/" in api.prepare(cfg, "get_campaign_status", "cd-1", stream_id="st-9").url


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
    assert api.normalise_base_url(host, port=port, schema=schema) == expected


def test_extras_parse_strings_from_the_form_and_prefixed_keys():
    cfg = api.KoreConnectionConfig.from_connection(
        make_conn(
            extra_dejson={
                "extra__kore__account_id": "acc-9",
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


def test_verify_may_name_a_ca_bundle():
    assert config(verify="/etc/ssl/certs/ca.pem").verify == "/etc/ssl/certs/ca.pem"


def test_config_repr_hides_the_secret():
    assert SECRET not in repr(config())


# -- answers ------------------------------------------------------------------------------------


def status_call():
    return api.prepare(config(), "get_campaign_status", "cd-1")


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
    assert exc.campaign_id == "cd-1"
    for part in ("get campaign status", "'cd-1'", f"HTTP {code}", "Campaign is not active"):
        assert part in str(exc)


def test_transient_flags():
    assert KoreRateLimitError.transient
    assert KoreServerError.transient
    assert not KoreAuthError.transient
    assert not KoreNotFoundError.transient
    assert not KoreApiError.transient


def test_rate_limit_carries_retry_after():
    with pytest.raises(KoreRateLimitError) as err:
        api.parse_answer(status_call(), 429, "{}", retry_after="7")
    assert err.value.retry_after == 7


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


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), ("0", 0.0), ("1.5", 1.5), (None, None), ("", None), ("soon", None), ("-3", 0.0)],
)
def test_parse_retry_after_seconds(value, expected):
    assert api.parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    assert api.parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_backoff_grows_is_jittered_and_capped():
    policy = api.RetryPolicy(max_retries=10, backoff_base=1.0, backoff_max=8.0)
    delays = [policy.delay(n) for n in range(1, 8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert policy.delay(1) <= 1.0
    assert 4.0 <= policy.delay(7) <= 8.0


def test_retry_after_is_a_floor_and_capped():
    policy = api.RetryPolicy(retry_after_max=60.0)
    assert policy.delay(1, retry_after=20.0) >= 20.0
    assert policy.delay(1, retry_after=3600.0) == 60.0


def test_only_429_and_5xx_gateway_errors_are_retried():
    policy = api.RetryPolicy(max_retries=2)
    assert [c for c in (400, 401, 403, 404, 409, 429, 500, 501, 502, 503, 504) if policy.should_retry(c, 0)] == [
        429,
        500,
        502,
        503,
        504,
    ]
    assert not policy.should_retry(503, 2)


def test_secrets_never_show_in_a_repr():
    """Tracebacks that print locals (Airflow 3.0's dag.test) show the holder, not the values."""
    secrets = Secrets(SECRET, None, "")
    assert SECRET not in repr(secrets)
    assert SECRET not in repr({"secrets": secrets})
    assert secrets.redact(f"echo {SECRET}") == "echo ***"
