"""`pod-agent keys show` and `pod-agent keys generate` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from pod_agent.cli.app import main
from pod_agent.protocol import IdentityKey


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_a_private_key_and_prints_its_public_half(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "modeller.pem"
    code, out, _ = _run(["keys", "generate", "--out", str(out_file), "--name", "alice"], capsys)
    assert code == 0
    key = IdentityKey.load(out_file)
    assert out_file.stat().st_mode & 0o777 == 0o600
    assert f"public key: {key.public.to_b64()}" in out
    assert f"key id:     {key.key_id}" in out
    assert 'name = "alice"' in out
    assert "PRIVATE" not in out


def test_generate_refuses_to_replace_a_key_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "modeller.pem"
    _run(["keys", "generate", "--out", str(out_file)], capsys)
    first = IdentityKey.load(out_file).key_id
    code, _, err = _run(["keys", "generate", "--out", str(out_file)], capsys)
    assert code != 0 and "already exists" in err and "Traceback" not in err
    assert IdentityKey.load(out_file).key_id == first
    assert _run(["keys", "generate", "--out", str(out_file), "--force"], capsys)[0] == 0
    assert IdentityKey.load(out_file).key_id != first


def test_generate_encrypts_with_the_passphrase_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELLER_KEY_PW", "hunter2")
    out_file = tmp_path / "modeller.pem"
    code, out, _ = _run(["keys", "generate", "--out", str(out_file), "--passphrase-env", "MODELLER_KEY_PW"], capsys)
    assert code == 0 and "encrypted" in out
    assert IdentityKey.load(out_file, b"hunter2").public.to_b64() in out


def _pod_toml(tmp_path: Path, key_path: Path) -> Path:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    config = tmp_path / "pod.toml"
    config.write_text(
        f'[pod]\nname = "pod-a"\nstate_dir = "{tmp_path}"\nidentity_key = "{key_path}"\n'
        f'[datasource]\npath = "{data}"\n'
    )
    return config


def test_show_prints_the_pods_public_key_and_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = IdentityKey.generate()
    key.save(tmp_path / "identity.pem")
    code, out, err = _run(["keys", "show", "--config", str(_pod_toml(tmp_path, tmp_path / "identity.pem"))], capsys)
    assert code == 0, err
    assert f"public key: {key.public.to_b64()}" in out and f"key id:     {key.key_id}" in out


def test_show_refuses_a_key_file_others_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "identity.pem"
    IdentityKey.generate().save(key_path)
    key_path.chmod(0o644)
    code, _, err = _run(["keys", "show", "--config", str(_pod_toml(tmp_path, key_path))], capsys)
    assert code != 0
    assert f"chmod 600 {key_path}" in err and "Traceback" not in err
