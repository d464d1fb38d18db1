"""The README's examples, as a reader copies them: the connection URIs and the offline DAG test."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from airflow.models import Connection

from airflow_provider_kore.api import KoreConnectionConfig
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.testing import KoreSimulator

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
EXAMPLE = REPO / "docs" / "examples" / "test_my_dag.py"
URI_EXPORT = re.compile(r"^export AIRFLOW_CONN_KORE_DEFAULT='(kore://[^']+)'$", re.MULTILINE)


def _readme_uris() -> dict[str, str]:
    """The README's URI examples, by host."""
    return {urlsplit(uri).hostname or "": uri for uri in URI_EXPORT.findall(README)}


def test_readme_offline_test_is_the_example_file_the_suite_runs() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    assert f"```python\n{example}```" in README


def test_readme_has_the_platform_and_the_simulator_uri() -> None:
    assert set(_readme_uris()) == {"platform.kore.ai", "127.0.0.1"}


@pytest.mark.parametrize(
    ("host", "base_url"),
    [("platform.kore.ai", "https://platform.kore.ai"), ("127.0.0.1", "http://127.0.0.1:8765")],
)
def test_readme_uri_gives_the_base_url(host: str, base_url: str) -> None:
    config = KoreConnectionConfig.from_connection(Connection(conn_id="kore_default", uri=_readme_uris()[host]))
    assert config.base_url == base_url


def test_readme_simulator_uri_is_what_the_simulator_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's simulator URI, on this test's port, reaches a simulator with its defaults."""
    with KoreSimulator() as sim:
        uri = _readme_uris()["127.0.0.1"].replace(":8765/", f":{sim.port}/")
        assert uri == sim.airflow_conn_uri()
        monkeypatch.setenv("AIRFLOW_CONN_KORE_DEFAULT", uri)
        status = KoreHook(kore_conn_id="kore_default").get_campaign_status("cd-sms-welcome-0001")
        assert status["status"] == "Ready"
        assert sim.count("get_campaign_status", status_code=200) == 1
