"""pod-agent --version, init, check, schema, datasets: real files, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pod_agent import __version__
from pod_agent.config import load_settings
from pod_agent.data.adult import AdultFiles
from pod_agent.protocol import IdentityKey


@pytest.fixture(autouse=True)
def _no_pod_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("POD_AGENT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def initialised(cli, tmp_path: Path, adult_parquet: Path) -> Path:
    config = tmp_path / "pod.toml"
    result = cli(
        "init",
        "--config",
        str(config),
        "--name",
        "clinic",
        "--data",
        str(adult_parquet),
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.code == 0, result.err
    return config


def test_version(cli) -> None:
    result = cli("--version")
    assert (result.code, result.out.strip()) == (0, f"pod-agent {__version__}")


def test_init_writes_a_loadable_commented_config_and_a_private_key(initialised: Path, tmp_path: Path) -> None:
    settings = load_settings(initialised)
    assert settings.pod.name == "clinic"
    assert initialised.read_text().count("\n# ") > 50
    key = tmp_path / "state" / "identity.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert b"PRIVATE KEY" in key.read_bytes()


def test_init_refuses_to_overwrite_without_force(cli, initialised: Path, tmp_path: Path) -> None:
    key = tmp_path / "state" / "identity.pem"
    before = key.read_bytes(), initialised.read_text()
    result = cli("init", "--config", str(initialised), "--state-dir", str(tmp_path / "state"))
    assert result.code == 2
    assert (
        result.err.strip() == f"pod-agent: error: {initialised} already exists - edit it, or pass --force to replace it"
    )
    assert (key.read_bytes(), initialised.read_text()) == before


def test_init_refuses_to_replace_an_existing_key(cli, initialised: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    result = cli("init", "--config", str(other), "--state-dir", str(tmp_path / "state"))
    assert result.code == 2
    assert "identity key" in result.err and "already exists" in result.err and "--force" in result.err
    assert not other.exists()


def test_init_force_replaces_config_and_key(cli, initialised: Path, tmp_path: Path) -> None:
    key = tmp_path / "state" / "identity.pem"
    before = key.read_bytes()
    result = cli(
        "init", "--config", str(initialised), "--state-dir", str(tmp_path / "state"), "--name", "renamed", "--force"
    )
    assert result.code == 0, result.err
    assert key.read_bytes() != before
    assert load_settings(initialised).pod.name == "renamed"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_check_passes_on_a_good_pod(cli, initialised: Path, hub_process_url: str, monkeypatch) -> None:
    hub_url = hub_process_url
    initialised.write_text(initialised.read_text().replace('url = "http://127.0.0.1:8700"', f'url = "{hub_url}"', 1))
    port = _free_port()
    monkeypatch.setenv("POD_AGENT_OPS__HEALTH_PORT", str(port))
    result = cli("check", "--config", str(initialised))
    assert result.code == 0, result.out
    lines = [line for line in result.out.splitlines() if not line.startswith(" ")]
    assert [line.split()[0] for line in lines] == ["ok"] * 7
    assert "48842 rows, 15 columns" in lines[2]
    assert "sandbox" in lines[3]
    assert f"health endpoint 127.0.0.1:{port} is free" in lines[4]
    assert f"{hub_url} answered /healthz in" in lines[5]
    assert lines[6].startswith("ok    privacy floor") and "trusted secure-aggregation peers" in lines[6]


def test_check_fails_on_a_taken_health_port_naming_the_setting(cli, initialised: Path, monkeypatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other_pod:
        port = other_pod.getsockname()[1]
        monkeypatch.setenv("POD_AGENT_OPS__HEALTH_PORT", str(port))
        result = cli("check", "--config", str(initialised))
    ports = next(line for line in result.out.splitlines() if line.split()[1:2] == ["ports"])
    assert result.code == 1 and ports.startswith("FAIL")
    assert f"127.0.0.1:{port} is taken" in ports and "ops.health_port" in ports


def test_run_on_a_taken_health_port_says_so_in_one_line(initialised: Path, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other_pod:
        port = other_pod.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("POD_AGENT_")}
        env["POD_AGENT_OPS__HEALTH_PORT"] = str(port)
        run = subprocess.run(
            [sys.executable, "-m", "pod_agent", "run", "--config", str(initialised)],
            capture_output=True, text=True, env=env, timeout=60,
        )
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in run.stderr
    assert errors == [
        f"pod-agent: error: health endpoint 127.0.0.1:{port} is taken (another pod-agent on this host?): set "
        "ops.health_port in pod.toml to a free port (each pod on a host needs its own), or to 0 to turn the "
        "endpoint off"
    ]


def test_check_prints_the_floor_in_force_for_each_modeller(cli, initialised: Path) -> None:
    key = IdentityKey.generate().public.to_b64()
    initialised.write_text(
        initialised.read_text()
        + f'\n[[security.modellers]]\nname = "alice"\npublic_key = "{key}"\nrole = "super"\n'
        + 'privacy = { min_pods = 5, metric_digits = 2 }\n'
        + f'\n[[security.modellers]]\nname = "bob"\npublic_key = "{IdentityKey.generate().public.to_b64()}"\n'
        + 'role = "general"\n'
    )
    result = cli("check", "--config", str(initialised))
    floor = result.out[result.out.index("privacy floor"):]
    assert "alice: require_secure_aggregation=True, min_pods=5, min_batch_size=32, min_rows=100" in floor
    assert "metric_digits=2" in floor
    assert "bob: require_secure_aggregation=True, min_pods=3" in floor


def test_check_fails_when_the_hub_cannot_be_reached(cli, initialised: Path) -> None:
    initialised.write_text(
        initialised.read_text().replace('url = "http://127.0.0.1:8700"', 'url = "http://127.0.0.1:9"', 1)
    )
    result = cli("check", "--config", str(initialised))
    assert result.code == 1
    (hub_line,) = [line for line in result.out.splitlines() if line.split()[1:2] == ["hub"]]
    assert hub_line.startswith("FAIL") and "unreachable" in hub_line


def test_check_reports_each_failing_check_on_its_line(cli, initialised: Path, tmp_path: Path) -> None:
    (tmp_path / "state" / "identity.pem").chmod(0o644)
    text = initialised.read_text().replace("csv_delimiter", "csv_delimitter", 1)
    initialised.write_text(text)
    result = cli("check", "--config", str(initialised))
    assert result.code == 1
    assert result.out.splitlines()[0].startswith("FAIL  config")
    assert "unknown key 'datasource.csv_delimitter'" in result.out
    assert [line.split()[0] for line in result.out.splitlines()] == ["FAIL"] + ["skip"] * 6


def test_check_names_a_bad_datasource_and_a_loose_key(cli, initialised: Path, tmp_path: Path, write_file) -> None:
    (tmp_path / "state" / "identity.pem").chmod(0o644)
    bad = write_file("bad.csv", "a,b\n1,2\n3\n")
    initialised.write_text(initialised.read_text().replace(f'path = "{_adult_path(initialised)}"', f'path = "{bad}"'))
    result = cli("check", "--config", str(initialised))
    lines = result.out.splitlines()
    assert result.code == 1
    assert lines[1].startswith("FAIL  identity key") and "chmod 600" in lines[1]
    assert lines[2].startswith("FAIL  datasource") and "line 3 has 1 fields, expected 2" in lines[2]


def _adult_path(config: Path) -> str:
    return str(load_settings(config).datasource.path)


def test_schema_prints_a_table(cli, initialised: Path) -> None:
    result = cli("schema", "--config", str(initialised))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["column", "stype", "arrow", "type", "why", "categories"]
    assert any(line.startswith("TARGET") and "<=50K, >50K" in line for line in lines)
    assert lines[-2].startswith("48842 rows, 15 columns, schema hash ")


def test_schema_says_why_a_column_is_categorical_and_how_to_force_it(cli, initialised: Path) -> None:
    lines = cli("schema", "--config", str(initialised)).out.splitlines()
    education = next(line for line in lines if line.startswith("education-num"))
    assert education.split()[:2] == ["education-num", "categorical"]
    assert "16 distinct integers (<= categorical_max_unique 50)" in education
    assert lines[-1] == ("integer columns taken as categorical: education-num; to treat them as numbers, set under "
                         '[datasource] in pod.toml: force_stypes = { continuous = ["education-num"] }')
    # The printed line, in place of the template's empty force_stypes under [datasource], does what it says.
    printed = lines[-1].split("pod.toml: ", 1)[1]
    initialised.write_text(initialised.read_text().replace("\nforce_stypes = {}\n", f"\n{printed}\n", 1))
    forced = cli("schema", "--config", str(initialised), "--json")
    doc = json.loads(forced.out)
    assert next(c for c in doc["columns"] if c["name"] == "education-num")["stype"] == "continuous"
    assert doc["why"]["education-num"] == "forced (force_stypes.continuous)"
    assert doc["why"]["age"] == "integers, over categorical_max_unique 50 distinct"


def test_schema_json_has_every_category_and_the_hash(cli, initialised: Path) -> None:
    result = cli("schema", "--config", str(initialised), "--json")
    doc = json.loads(result.out)
    assert doc["row_count"] == 48842
    assert len(doc["hash"]) == 64
    country = next(c for c in doc["columns"] if c["name"] == "native-country")
    assert len(country["categories"]) == 41


def test_schema_of_a_bad_table_is_one_line_and_nonzero(cli, initialised: Path, write_file) -> None:
    empty = write_file("empty.csv", "")
    initialised.write_text(initialised.read_text().replace(f'path = "{_adult_path(initialised)}"', f'path = "{empty}"'))
    result = cli("schema", "--config", str(initialised))
    assert result.code == 3
    assert result.err == f"pod-agent: error: {empty}: the file is empty - point datasource.path at a table with rows\n"


def test_missing_config_is_one_line(cli, tmp_path: Path) -> None:
    result = cli("schema", "--config", str(tmp_path / "nope.toml"))
    assert result.code == 2
    assert result.err.count("\n") == 1 and "config file not found" in result.err


def test_datasets_adult_writes_both_files(cli, tmp_path: Path, adult_files: AdultFiles) -> None:
    result = cli("datasets", "adult", "--out", str(tmp_path / "out"))
    assert result.code == 0, result.err
    for name in ("adult.csv", "adult.parquet"):
        written = tmp_path / "out" / name
        assert written.read_bytes() == (adult_files.csv if name.endswith("csv") else adult_files.parquet).read_bytes()


def test_console_script_error_has_no_traceback(tmp_path: Path, write_file) -> None:
    bad = write_file("ragged.csv", "a,b\n1,2\n3\n")
    config = write_file("pod.toml", f'[pod]\nname = "p"\n[datasource]\npath = "{bad}"\n')
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("pod-agent")), "schema", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert (
        proc.stderr
        == f"pod-agent: error: {bad}: line 3 has 1 fields, expected 2 - fix that row "
        "(or set datasource.csv_delimiter if the file uses another separator)\n"
    )
    assert "Traceback" not in proc.stdout + proc.stderr


def test_raw_adult_export_reads_through_pod_toml_alone(cli, write_file) -> None:
    from pod_agent.data.adult import ADULT_COLUMNS, adult_raw_paths

    _, raw_test = adult_raw_paths()
    names = ", ".join(f'"{name}"' for name in ADULT_COLUMNS)
    config = write_file(
        "pod.toml",
        f'[pod]\nname = "raw"\n[datasource]\npath = "{raw_test}"\ncsv_has_header = false\n'
        f'csv_column_names = [{names}]\ncsv_skip_rows = 1\ncsv_null_values = ["?"]\n'
        'force_stypes = { categorical = ["TARGET"] }\n',
    )
    result = cli("schema", "--config", str(config), "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["row_count"] == 16281
    columns = {c["name"]: c for c in doc["columns"]}
    assert columns["TARGET"]["categories"] == ["<=50K.", ">50K."]
    assert columns["age"]["arrow_type"] == "int64"
    assert "?" not in columns["workclass"]["categories"]
