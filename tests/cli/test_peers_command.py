"""pod-agent peers sign / import / show: real keys, real signatures, one-line refusals."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pod_agent.protocol import FederationRoster, IdentityKey, RosterPod, envelope_bytes, parse_envelope, sign_envelope

NOW = 1_700_000_000
PINNED = IdentityKey.generate()
LISTED = {"pod-b": IdentityKey.generate(), "pod-c": IdentityKey.generate()}


@pytest.fixture(autouse=True)
def _no_pod_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("POD_AGENT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def federation_pem(cli, tmp_path: Path) -> Path:
    path = tmp_path / "operator" / "federation.pem"
    path.parent.mkdir()
    assert cli("keys", "generate", "--out", str(path)).code == 0
    return path


@pytest.fixture
def pods_toml(tmp_path: Path) -> Path:
    path = tmp_path / "operator" / "pods.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(f'"{name}" = "{key.public.to_b64()}"\n' for name, key in LISTED.items()))
    return path


def _pod_config(cli, tmp_path: Path, write_parquet: Callable[..., Path], federation_key: str) -> Path:
    """A pod 'pod-a' that pins pod-b itself and the federation key, and keeps its roster next to pod.toml."""
    config = tmp_path / "pod" / "pod.toml"
    config.parent.mkdir()
    data = write_parquet("t.parquet", {"x": [1.0, 2.0], "y": ["a", "b"]})
    result = cli("init", "--config", str(config), "--name", "pod-a", "--data", str(data),
                 "--state-dir", str(tmp_path / "pod" / "state"))
    assert result.code == 0, result.err
    privacy = (
        f'federation_key = "{federation_key}"\n'
        'federation_roster = "roster.json"\n'
        f'peers = [{{ name = "pod-b", public_key = "{PINNED.public.to_b64()}" }}]\n'
    )
    config.write_text(config.read_text().replace("[privacy]\n", "[privacy]\n" + privacy, 1))
    return config


def _signed(cli, federation_pem: Path, pods: Path, out: Path) -> str:
    """Sign a roster with the CLI; return the federation key it tells pod owners to pin."""
    result = cli("peers", "sign", "--key", str(federation_pem), "--federation", "acme health",
                 "--pods", str(pods), "--out", str(out))
    assert result.code == 0, result.err
    return result.out.split('federation_key = "')[1].split('"')[0]


def test_a_signed_roster_is_imported_and_its_pods_shown_beside_the_pinned_ones(
    cli, tmp_path: Path, write_parquet, federation_pem: Path, pods_toml: Path
) -> None:
    roster = tmp_path / "operator" / "roster.json"
    config = _pod_config(cli, tmp_path, write_parquet, _signed(cli, federation_pem, pods_toml, roster))

    imported = cli("peers", "import", str(roster), "--config", str(config))
    assert imported.code == 0, imported.err
    assert "imported the roster of federation 'acme health': 2 pods, expires " in imported.out
    installed = config.parent / "roster.json"
    assert installed.read_bytes() == roster.read_bytes()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644

    shown = cli("peers", "show", "--config", str(config))
    assert shown.code == 0, shown.err
    lines = shown.out.splitlines()
    assert lines[0].startswith(f"federation roster: 'acme health' from {installed}, issued ")
    assert " expires " in lines[0]
    rows = [line.split() for line in lines[2:5]]
    assert [(row[0], row[2:]) for row in rows] == [
        ("pod-a", ["this", "pod"]),
        ("pod-b", ["pinned"]),
        ("pod-c", ["roster"]),
    ]
    assert rows[1][1] == PINNED.key_id and rows[2][1] == LISTED["pod-c"].key_id
    assert lines[5] == f"note: the roster lists 'pod-b' with key {LISTED['pod-b'].key_id[:16]}; the pinned key is used"


def test_a_roster_signed_by_another_key_is_refused_and_nothing_installed(
    cli, tmp_path: Path, write_parquet, federation_pem: Path, pods_toml: Path
) -> None:
    roster = tmp_path / "operator" / "roster.json"
    _signed(cli, federation_pem, pods_toml, roster)
    config = _pod_config(cli, tmp_path, write_parquet, IdentityKey.generate().public.to_b64())
    result = cli("peers", "import", str(roster), "--config", str(config))
    assert result.code == 2
    assert result.err.startswith(f"pod-agent: error: federation roster {roster} is signed by key ")
    assert "not the pinned privacy.federation_key" in result.err and len(result.err.splitlines()) == 1
    assert not (config.parent / "roster.json").exists()


def test_a_forged_roster_is_refused(cli, tmp_path: Path, write_parquet, federation_pem: Path, pods_toml: Path) -> None:
    roster = tmp_path / "operator" / "roster.json"
    config = _pod_config(cli, tmp_path, write_parquet, _signed(cli, federation_pem, pods_toml, roster))
    envelope = json.loads(roster.read_text())
    envelope["payload"]["expires_at"] += 365 * 86_400
    roster.write_text(json.dumps(envelope))
    result = cli("peers", "import", str(roster), "--config", str(config))
    assert result.code == 2
    assert "the signature does not verify under privacy.federation_key" in result.err
    assert "altered after signing or forged" in result.err


def test_an_expired_roster_is_refused(cli, tmp_path: Path, write_parquet, federation_pem: Path) -> None:
    key = IdentityKey.load(federation_pem)
    config = _pod_config(cli, tmp_path, write_parquet, key.public.to_b64())
    old = FederationRoster(
        federation="acme health", issued_at=NOW, expires_at=NOW + 86_400,
        pods=[RosterPod(name="pod-c", public_key=LISTED["pod-c"].public.to_b64())],
    )
    roster = tmp_path / "old.json"
    roster.write_bytes(envelope_bytes(sign_envelope(old, key)))
    result = cli("peers", "import", str(roster), "--config", str(config))
    assert result.code == 2
    assert "(federation 'acme health') expired 2023-11-15 22:13:20Z: get a current roster" in result.err


def test_show_without_a_roster_lists_the_pinned_peers(cli, tmp_path: Path, write_parquet) -> None:
    config = _pod_config(cli, tmp_path, write_parquet, IdentityKey.generate().public.to_b64())
    text = config.read_text().replace('federation_roster = "roster.json"\n', "", 1)
    config.write_text(text)
    shown = cli("peers", "show", "--config", str(config))
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0].startswith("federation roster: none configured")
    assert [line.split()[0] for line in shown.out.splitlines()[2:]] == ["pod-a", "pod-b"]


def test_show_with_a_configured_roster_not_yet_imported_says_how(cli, tmp_path: Path, write_parquet) -> None:
    config = _pod_config(cli, tmp_path, write_parquet, IdentityKey.generate().public.to_b64())
    result = cli("peers", "show", "--config", str(config))
    assert result.code == 2
    assert "does not exist: import the federation's roster with `pod-agent peers import" in result.err


def test_sign_takes_a_json_pods_file_and_pins_every_key(cli, tmp_path: Path, federation_pem: Path) -> None:
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({name: key.public.to_b64() for name, key in LISTED.items()}))
    out = tmp_path / "roster.json"
    pinned = _signed(cli, federation_pem, pods, out)
    envelope = parse_envelope(out.read_bytes())
    assert (
        envelope.signer == IdentityKey.load(federation_pem).key_id
        and pinned == IdentityKey.load(federation_pem).public.to_b64()
    )
    assert envelope.payload["pods"] == [
        {"name": name, "public_key": LISTED[name].public.to_b64()} for name in sorted(LISTED)
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "pods.toml",
            '"pod-b" = "bm90IGEga2V5"\n',
            r"entry 'pod-b': public_key: Value error, not a base64 Ed25519 public key",
        ),
        ("pods.toml", '"Pod B" = "x"\n', r"entry 'Pod B': name: String should match pattern"),
        ("pods.json", '{"pod-b": 1}', "must map each pod name to its base64 public key"),
        ("pods.txt", "", "must end in .toml or .json"),
        ("pods.json", '{"pod-b": "x", "pod-b": "y"}', r"does not parse \(JSON object has key 'pod-b' twice"),
    ],
)
def test_sign_refuses_a_bad_pods_file_in_one_line(
    cli, tmp_path: Path, federation_pem: Path, name: str, content: str, message: str
) -> None:
    pods = tmp_path / name
    pods.write_text(content)
    result = cli("peers", "sign", "--key", str(federation_pem), "--federation", "acme", "--pods", str(pods),
                 "--out", str(tmp_path / "roster.json"))
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert re.search(message, result.err), result.err
    assert not (tmp_path / "roster.json").exists()
