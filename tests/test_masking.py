"""Long-running processes stay flat: nothing per request or per token reaches Airflow's masker.

Airflow's secrets masker rebuilds one regex over every registered secret at each new one (on
the triggerer's event loop too). The provider registers the client secret once per process and
connection, and never a JWT: with ``jwt_per_request`` (a new token per request), 200 hook reads
and 40 deferred waits of 3 polls each add at most 3 registrations in all.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_kore import _compat, config, shared
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.testing import KoreSimulator
from airflow_provider_kore.triggers import campaign as trigger_module
from airflow_provider_kore.triggers.campaign import KoreCampaignStatusTrigger

SECRET = "masking-test-client-secret-0123456789abcdef"


@pytest.fixture
def registered(monkeypatch):
    """Every value the provider hands to Airflow's masker (sync or async)."""
    values: list[str] = []

    monkeypatch.setattr(_compat, "mask_secret", values.append)
    monkeypatch.setattr(config, "_masked", set())
    return values


def test_reads_and_deferred_waits_register_the_secret_once_and_no_token(registered, monkeypatch):
    with KoreSimulator(client_secret=SECRET, complete_after_polls=3) as sim:
        conn = json.loads(sim.airflow_conn_json(jwt_per_request=True))
        monkeypatch.setenv("AIRFLOW_CONN_KORE_DEFAULT", json.dumps(conn))
        hooks = [KoreHook() for _ in range(4)]
        for n in range(200):
            hooks[n % 4].get_campaign_status("cd-voice-renewal-0001")

        ids = [f"cd-mask-{n:02d}" for n in range(40)]
        for campaign_id in ids:
            sim.add_campaign(campaign_id, campaign_type="voice", status="Active")

        async def no_wait(seconds: float) -> None:
            await asyncio.sleep(0)

        monkeypatch.setattr(trigger_module, "_sleep", no_wait)

        async def waits() -> list[dict]:
            async def one(campaign_id: str) -> dict:
                trigger = KoreCampaignStatusTrigger(campaign_id=campaign_id, poll_interval=0.01)
                (event,) = [event.payload async for event in trigger.run()]
                return event

            return await asyncio.gather(*(one(c) for c in ids))

        events = asyncio.run(waits())
        shared.reset_shared_clients()
        tokens = {record.headers["auth"] for record in sim.requests}

    assert all(event["status"] == "success" for event in events)
    assert sum(event["polls"] for event in events) >= 120
    assert len(tokens) >= 320  # a fresh token per request
    assert len(registered) <= 3
    assert SECRET in registered
    assert not any(value.startswith("eyJ") for value in registered)


def test_test_button_clicks_leave_the_api_server_flat(registered, monkeypatch, requests_mock):
    """The UI's Test button builds a hook under a new throwaway connection id for every click."""
    from airflow_provider_kore import pacing

    pacing.reset_sync_pacers()
    url = "https://kore.test/campaign/api/v2/public/st-1/campaign/cd-airflow-connection-test/status"
    requests_mock.post(url, status_code=404, json={"errors": [{"msg": "Campaign not found"}]})
    for click in range(50):
        conn = {"conn_type": "kore", "host": "https://kore.test", "login": "cs-1", "password": SECRET}
        conn["extra"] = {"account_id": "acc-1", "stream_id": "st-1"}
        monkeypatch.setenv(f"AIRFLOW_CONN_TEST_CLICK_{click}", json.dumps(conn))
        ok, message = KoreHook(f"test_click_{click}").test_connection()
        assert ok, message
    assert registered == [SECRET]
    assert pacing._sync_pacers == {}
