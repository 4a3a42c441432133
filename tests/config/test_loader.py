"""load_settings: TOML file plus POD_AGENT_* env, with one-line errors naming key and file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from pod_agent.config import PodSettings, example_text, load_settings, render_pod_toml
from pod_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MINIMAL = """
[pod]
name = "pod-a"
state_dir = "state"

[datasource]
path = "data.csv"
"""


@pytest.fixture
def pod_toml(tmp_path: Path):
    def write(text: str = MINIMAL) -> Path:
        path = tmp_path / "pod.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _no_pod_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("POD_AGENT_"):
            monkeypatch.delenv(name)


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        items = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested is not None:
            keys += _all_keys(nested, f"{prefix}{name}.")
        elif items and type(None) in args:  # an optional inline table, documented as `name = { ... }`
            keys.append(f"{prefix}{name}")
        elif items:  # an array of tables, [[section.name]]
            keys.append(f"[[{prefix}{name}]]")
            for item in items:
                keys += _all_keys(item, f"{prefix}{name}[].")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_example_loads_with_every_default() -> None:
    settings = load_settings(REPO / "config" / "pod.example.toml")
    assert settings.pod.name == "example-pod"
    assert settings.security.sandbox == "strict"
    assert settings.datasource.path == (REPO / "config" / "data" / "table.csv")


def test_example_documents_every_settings_key() -> None:
    text = example_text()
    missing = []
    for dotted in _all_keys(PodSettings):
        if dotted.startswith("[["):
            # A nested array of tables is written [[outer.inner]] (TOML adds it to the last outer table).
            header = dotted.replace("[]", "")
            if not re.search(rf"^#?\s*{re.escape(header)}$", text, flags=re.MULTILINE):
                missing.append(dotted)
            continue
        section, _, key = dotted.rpartition(".")
        if not re.search(rf"^#?\s*{re.escape(key)} = ", text, flags=re.MULTILINE):
            missing.append(dotted)
        if f"[{section.split('.')[0]}]" not in text:
            missing.append(f"[{section}]")
    assert missing == []


def test_repository_example_is_the_packaged_one() -> None:
    assert (REPO / "config" / "pod.example.toml").read_text(encoding="utf-8") == example_text()


def test_every_documented_key_is_preceded_by_a_comment() -> None:
    lines = example_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            assert lines[i - 1].startswith("#"), f"undocumented: {line}"


def test_rendered_pod_toml_carries_name_state_dir_and_data(tmp_path: Path) -> None:
    text = render_pod_toml(name="clinic-7", state_dir=tmp_path / "st", data_path=tmp_path / 'we"ird.csv')
    parsed = tomllib.loads(text)
    assert parsed["pod"]["name"] == "clinic-7"
    assert parsed["pod"]["state_dir"] == str(tmp_path / "st")
    assert parsed["datasource"]["path"] == str(tmp_path / 'we"ird.csv')


def test_relative_paths_are_resolved_against_the_config_directory(pod_toml) -> None:
    path = pod_toml()
    settings = load_settings(path)
    assert settings.datasource.path == path.parent.resolve() / "data.csv"
    assert settings.pod.identity_key_path == path.parent.resolve() / "state" / "identity.pem"


def test_env_var_wins_over_file(pod_toml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_AGENT_HUB__URL", "https://hub.example.org:8700")
    monkeypatch.setenv("POD_AGENT_PRIVACY__MIN_PODS", "5")
    settings = load_settings(pod_toml(MINIMAL + '\n[hub]\nurl = "http://127.0.0.1:1"\n'))
    assert settings.hub.url == "https://hub.example.org:8700"
    assert settings.privacy.min_pods == 5


def test_env_alone_is_enough_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POD_AGENT_POD__NAME", "env-pod")
    monkeypatch.setenv("POD_AGENT_DATASOURCE__PATH", str(tmp_path / "t.csv"))
    assert load_settings(None).pod.name == "env-pod"


def test_unknown_key_names_key_file_and_known_keys(pod_toml) -> None:
    path = pod_toml(MINIMAL + "\n[hub]\nurll = 'x'\n")
    with pytest.raises(ConfigError, match=r"pod\.toml: unknown key 'hub\.urll' - remove it .*known keys there: .*url"):
        load_settings(path)


def test_a_renamed_key_is_refused_naming_its_new_name(pod_toml) -> None:
    path = pod_toml(MINIMAL + '\n[hub]\nurl = "http://192.0.2.1:8700"\nallow_insecure_http = true\n')
    with pytest.raises(ConfigError, match=r"key 'hub\.allow_insecure_http' was renamed 'hub\.unsafe_allow_http'"):
        load_settings(path)


def test_unknown_section_is_an_error(pod_toml) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'extras'"):
        load_settings(pod_toml(MINIMAL + "\n[extras]\nx = 1\n"))


def test_bad_value_names_key_value_and_fix(pod_toml) -> None:
    path = pod_toml(MINIMAL.replace('path = "data.csv"', 'path = "data.csv"\nformat = "xlsx"'))
    with pytest.raises(
        ConfigError, match=r"pod\.toml: datasource\.format = 'xlsx' is invalid: .*'csv'.* - set a valid value"
    ):
        load_settings(path)


def test_bad_env_value_names_the_variable(pod_toml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_AGENT_HUB__HEARTBEAT_S", "-3")
    with pytest.raises(ConfigError, match=r"^env POD_AGENT_HUB__HEARTBEAT_S: hub\.heartbeat_s = '-3' is invalid"):
        load_settings(pod_toml())


def test_missing_required_key_is_named(pod_toml) -> None:
    with pytest.raises(ConfigError, match=r"required key 'datasource\.path' is missing - add it"):
        load_settings(pod_toml(MINIMAL.replace('path = "data.csv"', "")))


def test_bad_pod_name_is_refused(pod_toml) -> None:
    with pytest.raises(ConfigError, match=r"pod\.name = 'Pod A' is invalid"):
        load_settings(pod_toml(MINIMAL.replace('"pod-a"', '"Pod A"')))


def test_column_both_ignored_and_forced_is_refused(pod_toml) -> None:
    text = MINIMAL + 'ignore_cols = ["ssn"]\nforce_stypes = { text = ["ssn"] }\n'
    with pytest.raises(ConfigError, match=r"column 'ssn' is listed in both ignore_cols and force_stypes\.text"):
        load_settings(pod_toml(text))


def test_unknown_stype_in_force_stypes_is_refused(pod_toml) -> None:
    with pytest.raises(ConfigError, match=r"force_stypes"):
        load_settings(pod_toml(MINIMAL + 'force_stypes = { numeric = ["age"] }\n'))


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found - create one with `pod-agent init`"):
        load_settings(tmp_path / "nope.toml")


def test_directory_instead_of_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not a file"):
        load_settings(tmp_path)


def test_toml_syntax_error_names_file_and_line(pod_toml) -> None:
    with pytest.raises(ConfigError, match=r"pod\.toml: not valid TOML: .*line 3"):
        load_settings(pod_toml("[pod]\nname = 'a'\nstate_dir = \n"))


def test_several_problems_are_counted_in_one_line(pod_toml) -> None:
    text = MINIMAL + "\n[hub]\nheartbeat_s = -1\nbackoff_cap_s = -1\n"
    with pytest.raises(ConfigError, match=r"\(and 1 more problem\(s\)\)$") as info:
        load_settings(pod_toml(text))
    assert "\n" not in str(info.value)


def test_unknown_csv_encoding_is_refused(pod_toml) -> None:
    with pytest.raises(
        ConfigError,
        match=r"pod\.toml: datasource\.csv_encoding: unknown text encoding 'klingon'; use a Python codec name",
    ):
        load_settings(pod_toml(MINIMAL + 'csv_encoding = "klingon"\n'))
