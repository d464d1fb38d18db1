"""The provider as Airflow sees it, without a server: provider info, entry point, ProvidersManager, CLI.

Airflow 3.2+ builds the ``kore`` connection form from ``conn-fields`` / ``ui-field-behaviour`` in
:func:`get_provider_info` without importing the hook; Airflow 3.0/3.1 import the hook and call its
``get_connection_form_widgets`` / ``get_ui_field_behaviour`` classmethods (which need ``wtforms``).
ProvidersManager is a process-wide singleton, so it is probed in a fresh interpreter.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import airflow
import pytest

from airflow_provider_kore import __version__, get_provider_info
from airflow_provider_kore.hooks.kore import KoreHook

AIRFLOW_VERSION = tuple(int(part) for part in airflow.__version__.split(".")[:2])
#: Airflow 3.2 reads the form from the provider info; older ones call the hook's classmethods.
READS_CONN_FIELDS = AIRFLOW_VERSION >= (3, 2)
HAS_WTFORMS = importlib.util.find_spec("wtforms") is not None


def _kore_connection_type() -> dict[str, Any]:
    (conn_type,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == "kore"]
    return conn_type


def _airflow_env(home: Path) -> dict[str, str]:
    """This environment, minus any Airflow settings, with a throwaway AIRFLOW_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        PYTHONWARNINGS="ignore",
    )
    return env


# -- get_provider_info() -------------------------------------------------------------------------


def test_provider_info_names_this_distribution() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-kore"
    assert info["name"] == "Kore.ai"
    assert info["versions"][0] == __version__ == importlib.metadata.version("airflow-provider-kore")


def test_provider_info_passes_airflows_own_schema() -> None:
    """ProvidersManager validates the dict against this schema and drops the provider if it fails."""
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(get_provider_info())


@pytest.mark.parametrize("kind", ["hooks", "operators", "sensors", "triggers"])
def test_every_listed_module_imports(kind: str) -> None:
    entries = get_provider_info()[kind]
    assert entries, f"no {kind} listed"
    for entry in entries:
        assert entry["integration-name"] in {i["integration-name"] for i in get_provider_info()["integrations"]}
        for module in entry["python-modules"]:
            importlib.import_module(module)


def test_connection_type_points_at_the_hook() -> None:
    conn_type = _kore_connection_type()
    module, _, name = conn_type["hook-class-name"].rpartition(".")
    hook_class = getattr(importlib.import_module(module), name)
    assert hook_class is KoreHook
    assert hook_class.conn_type == "kore"
    assert hook_class.hook_name == conn_type["hook-name"] == "Kore.ai"
    assert hook_class.conn_name_attr == "kore_conn_id"


def _non_default_value(name: str, schema: dict[str, Any]) -> Any:
    """A value of the form field's declared type that differs from the hook's default."""
    types = schema["type"]
    if "enum" in schema:
        (other,) = [choice for choice in schema["enum"] if choice != schema.get("default")]
        return other
    if "boolean" in types:
        return not schema.get("default", False)
    if "integer" in types:
        return schema.get("minimum", 0) + 7
    if "number" in types:
        return 12.5
    return f"{name.replace('_', '-')}-0001"


def _config(extra: dict[str, Any]) -> Any:
    from airflow.models import Connection

    from airflow_provider_kore.config import KoreConnectionConfig

    conn = Connection(conn_id="kore_form", conn_type="kore", host="https://kore.test", login="cs-1", password="secret")
    conn.set_extra(json.dumps(extra))
    return KoreConnectionConfig.from_connection(conn)


def test_every_form_field_is_an_extra_the_hook_reads() -> None:
    """A value typed into any extra field of the form reaches the hook's config, and no extra is missing."""
    from dataclasses import fields as dataclass_fields

    from airflow_provider_kore.config import KoreConnectionConfig

    form = _kore_connection_type()["conn-fields"]
    standard = {"base_url", "client_id", "client_secret", "conn_id"}  # host / login / password, and the id
    assert set(form) == {f.name for f in dataclass_fields(KoreConnectionConfig)} - standard
    typed = {name: _non_default_value(name, spec["schema"]) for name, spec in form.items()}
    config = _config(typed)
    assert {name: getattr(config, name) for name in form} == typed


def test_form_defaults_are_the_hooks_defaults_and_blank_fields_are_accepted() -> None:
    """Every extra may be left blank (all are nullable); the form's stated default is what the hook then uses."""
    form = _kore_connection_type()["conn-fields"]
    for name, spec in form.items():
        assert "null" in spec["schema"]["type"], name
        # Airflow masks a field of format "password"; none of the extras is a secret.
        assert spec["schema"].get("format") != "password", name
    config = _config({name: None for name in form} | {"account_id": "acc-1"})
    for name, spec in form.items():
        if "default" in spec["schema"]:
            assert getattr(config, name) == spec["schema"]["default"], name
    # account_id is blank-able in the form, but the hook names it when it is missing.
    with pytest.raises(ValueError, match="account_id"):
        _config({name: None for name in form})


def test_ui_field_behaviour_placeholders_fit_the_form() -> None:
    behaviour = _kore_connection_type()["ui-field-behaviour"]
    placeholders = behaviour["placeholders"]
    # Airflow shows a placeholder only on a field it draws: a standard one or a conn-field.
    assert set(placeholders) <= {"host", "login", "password"} | set(_kore_connection_type()["conn-fields"])
    assert not {"host", "login", "password"} & set(behaviour["hidden-fields"])
    # The Platform URL as the placeholder shows it is a working base URL.
    from airflow.models import Connection

    from airflow_provider_kore.config import KoreConnectionConfig

    conn = Connection(conn_id="k", conn_type="kore", host=placeholders["host"], login="cs-1", password="s")
    conn.set_extra(json.dumps({"account_id": "acc-1"}))
    assert KoreConnectionConfig.from_connection(conn).base_url == placeholders["host"]


def test_entry_point_is_installed_and_returns_the_provider_info() -> None:
    points = [
        ep
        for ep in importlib.metadata.entry_points(group="apache_airflow_provider")
        if ep.dist is not None and ep.dist.name == "airflow-provider-kore"
    ]
    assert [ep.value for ep in points] == ["airflow_provider_kore:get_provider_info"]
    assert points[0].load()() == get_provider_info()


# -- the hook classmethods Airflow 3.0 / 3.1 read ------------------------------------------------


@pytest.mark.skipif(not HAS_WTFORMS, reason="wtforms is not installed: Airflow < 3.2 then shows no extra fields")
def test_form_widgets_classmethod_mirrors_conn_fields() -> None:
    from wtforms import BooleanField, IntegerField, PasswordField, StringField

    fields = _kore_connection_type()["conn-fields"]
    widgets = KoreHook.get_connection_form_widgets()
    assert set(widgets) == set(fields)
    for name, widget in widgets.items():
        # Airflow < 3.2 drops the whole form if any field has another class.
        assert widget.field_class in (BooleanField, IntegerField, PasswordField, StringField), name
        assert widget.args[0] == fields[name]["label"]
        assert widget.kwargs["description"] == fields[name]["description"]
    assert widgets["verify"].field_class is BooleanField
    assert widgets["max_retries"].field_class is IntegerField
    assert widgets["account_id"].field_class is StringField
    (choice,) = widgets["jwt_algorithm"].kwargs["validators"]
    # A null choice crashes Airflow 3.0's form ("No value found for item").
    assert choice.values == ["HS256", "HS512"]


def test_field_behaviour_classmethod_mirrors_ui_field_behaviour() -> None:
    behaviour = _kore_connection_type()["ui-field-behaviour"]
    assert KoreHook.get_ui_field_behaviour() == {
        "hidden_fields": behaviour["hidden-fields"],
        "relabeling": behaviour["relabeling"],
        "placeholders": behaviour["placeholders"],
    }


# -- ProvidersManager, in a fresh interpreter ----------------------------------------------------

_PROBE = r"""
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    provider = pm.providers.get("airflow-provider-kore")
    hook = pm.hooks.get("kore")
    widgets = {k: getattr(v, "field_name", None) for k, v in pm.connection_form_widgets.items() if "__kore__" in k}
    behaviour = pm.field_behaviours.get("kore")
print("PROBE" + json.dumps({
    "provider_version": provider.version if provider else None,
    "hook": None if hook is None else {
        "class": hook.hook_class_name,
        "conn_id_attribute": hook.connection_id_attribute_name,
        "name": hook.hook_name,
        "package": hook.package_name,
        "testable": hook.connection_testable,
    },
    "widgets": widgets,
    "behaviour": behaviour,
    "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
}))
"""


@pytest.fixture(scope="module")
def providers_manager_view(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a fresh ProvidersManager knows about the ``kore`` connection type."""
    home = tmp_path_factory.mktemp("airflow_home")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=_airflow_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE")]
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines, done.stdout[-3000:]
    return json.loads(lines[-1][len("PROBE") :])


def test_providers_manager_lists_the_provider(providers_manager_view: dict[str, Any]) -> None:
    assert providers_manager_view["provider_version"] == __version__


def test_providers_manager_finds_the_kore_hook(providers_manager_view: dict[str, Any]) -> None:
    assert providers_manager_view["hook"] == {
        "class": "airflow_provider_kore.hooks.kore.KoreHook",
        "conn_id_attribute": "kore_conn_id",
        "name": "Kore.ai",
        "package": "airflow-provider-kore",
        "testable": True,
    }


def test_providers_manager_has_the_form(providers_manager_view: dict[str, Any]) -> None:
    if not READS_CONN_FIELDS and not HAS_WTFORMS:
        pytest.skip(f"Airflow {airflow.__version__} needs wtforms to read a hook's form; it is not installed")
    widgets = providers_manager_view["widgets"]
    conn_type = _kore_connection_type()
    assert widgets == {f"extra__kore__{name}": name for name in conn_type["conn-fields"]}
    behaviour = providers_manager_view["behaviour"]
    ours = conn_type["ui-field-behaviour"]
    assert behaviour["relabeling"] == ours["relabeling"]
    assert behaviour["hidden_fields"] == ours["hidden-fields"]
    # Airflow prefixes extra-field placeholders with the connection type.
    assert behaviour["placeholders"] == {
        (name if name in {"host", "login", "password"} else f"extra__kore__{name}"): text
        for name, text in ours["placeholders"].items()
    }


@pytest.mark.skipif(not READS_CONN_FIELDS, reason="Airflow < 3.2 reads the form from the hook classmethods")
def test_no_deprecation_warning_for_the_kore_hook(providers_manager_view: dict[str, Any]) -> None:
    """With conn-fields / ui-field-behaviour present, 3.2+ never calls the deprecated classmethods."""
    ours = [w for w in providers_manager_view["warnings"] if "kore" in w.lower()]
    assert ours == []


# -- the airflow CLI -----------------------------------------------------------------------------


#: Both CLI commands in one interpreter (one Airflow import, not two): each one's stdout, marked.
_CLI = r"""
import contextlib, io, sys
from airflow.__main__ import main

for command in (["providers", "list"], ["providers", "hooks"]):
    sys.argv = ["airflow", *command, "--output", "json"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main()
    print("CLI " + " ".join(command) + "\t" + out.getvalue().replace("\n", " "))
"""


@pytest.fixture(scope="module")
def cli_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``airflow providers list`` / ``hooks`` with ``--output json``, by command."""
    done = subprocess.run(
        [sys.executable, "-c", _CLI],
        env=_airflow_env(tmp_path_factory.mktemp("airflow_cli_home")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith("CLI "):
            command, _, text = line[len("CLI ") :].partition("\t")
            # Airflow 3.0 prints log lines before the JSON.
            answers[command] = json.loads(text[text.index("[{") :])
    assert set(answers) == {"providers list", "providers hooks"}, done.stdout[-3000:]
    return answers


def test_cli_providers_list_shows_the_provider(cli_json: dict[str, Any]) -> None:
    rows = cli_json["providers list"]
    (row,) = [r for r in rows if r["package_name"] == "airflow-provider-kore"]
    assert row["version"] == __version__
    assert "Kore.ai" in row["description"]


def test_cli_providers_hooks_shows_the_kore_hook(cli_json: dict[str, Any]) -> None:
    rows = cli_json["providers hooks"]
    (row,) = [r for r in rows if r["connection_type"] == "kore"]
    assert row["class"] == "airflow_provider_kore.hooks.kore.KoreHook"
    assert row["conn_id_attribute_name"] == "kore_conn_id"
    assert row["package_name"] == "airflow-provider-kore"
    assert row["hook_name"] == "Kore.ai"


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("airflow_provider_kore.hooks.kore", {"KoreHook"}),
        (
            "airflow_provider_kore.operators.campaign",
            {
                "KoreStartCampaignOperator",
                "KoreStartSmsCampaignOperator",
                "KoreStopCampaignOperator",
                "KoreStopVoiceCampaignOperator",
            },
        ),
        ("airflow_provider_kore.operators.contacts", {"KoreLoadContactsOperator"}),
        ("airflow_provider_kore.operators.results", {"KoreExportCampaignResultsOperator"}),
        ("airflow_provider_kore.sensors.campaign", {"KoreCampaignStatusSensor"}),
        ("airflow_provider_kore.triggers.campaign", {"KoreCampaignStatusTrigger"}),
    ],
)
def test_a_star_import_brings_only_the_public_classes(module, names):
    """``from ... import *`` in a DAG file must not shadow the DAG's own names (``datetime``, ``time``, ...)."""
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert {name for name in namespace if not name.startswith("__")} == names
