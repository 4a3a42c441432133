"""Ed25519 identity keys: files, permissions, passphrases, key ids, hidden bytes."""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pod_agent.errors import KeyFileError, ProtocolError
from pod_agent.protocol import IdentityKey, PublicKey, key_id_of, passphrase_from_env


@pytest.fixture(scope="module")
def key() -> IdentityKey:
    return IdentityKey.generate()


def test_key_id_is_sha256_hex_of_the_raw_public_key(key: IdentityKey) -> None:
    raw = base64.b64decode(key.public.to_b64())
    assert len(raw) == 32
    assert key.key_id == key_id_of(raw) == key_id_of(key.public) == hashlib.sha256(raw).hexdigest()


def test_saved_key_has_mode_0600_and_loads_back(tmp_path: Path, key: IdentityKey) -> None:
    path = tmp_path / "id.pem"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert IdentityKey.load(path).key_id == key.key_id


def test_passphrase_protected_key_needs_its_passphrase(tmp_path: Path, key: IdentityKey) -> None:
    path = tmp_path / "id.pem"
    key.save(path, b"correct horse")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert IdentityKey.load(path, b"correct horse").key_id == key.key_id
    with pytest.raises(KeyFileError, match="passphrase-protected"):
        IdentityKey.load(path)
    with pytest.raises(KeyFileError, match="passphrase is wrong"):
        IdentityKey.load(path, b"wrong")


def test_unencrypted_key_given_a_passphrase_is_refused(tmp_path: Path, key: IdentityKey) -> None:
    path = tmp_path / "id.pem"
    key.save(path)
    with pytest.raises(KeyFileError, match="not encrypted"):
        IdentityKey.load(path, b"pw")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602])
def test_key_file_open_to_group_or_others_is_refused_with_the_fix(tmp_path: Path, key: IdentityKey, mode: int) -> None:
    path = tmp_path / "id.pem"
    key.save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=rf"mode {mode:04o}.*run `chmod 600 {path}`"):
        IdentityKey.load(path)


def test_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist: create it with `pod-agent init`"):
        IdentityKey.load(tmp_path / "nope.pem")


def test_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        IdentityKey.load(path)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_bytes(b"hello")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a readable PKCS8 PEM"):
        IdentityKey.load(path)


def test_save_refuses_to_replace_a_key_unless_asked(tmp_path: Path, key: IdentityKey) -> None:
    path = tmp_path / "id.pem"
    key.save(path)
    other = IdentityKey.generate()
    with pytest.raises(KeyFileError, match="already exists"):
        other.save(path)
    other.save(path, overwrite=True)
    assert IdentityKey.load(path).key_id == other.key_id
    assert sorted(os.listdir(tmp_path)) == ["id.pem"]


def test_keys_hide_their_bytes_in_repr_and_str(key: IdentityKey) -> None:
    pem = key.to_pem().decode()
    secret_b64 = "".join(pem.splitlines()[1:-1])
    for text in (repr(key), str(key), repr(key.public), str(key.public)):
        assert secret_b64 not in text and key.public.to_b64() not in text
        assert key.key_id[:16] in text


def test_identity_key_cannot_be_pickled(key: IdentityKey) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)


def test_signature_verifies_only_for_the_same_data_and_key(key: IdentityKey) -> None:
    signature = key.sign(b"data")
    key.public.verify(signature, b"data")
    with pytest.raises(ProtocolError, match="does not verify"):
        key.public.verify(signature, b"datA")
    with pytest.raises(ProtocolError, match="does not verify"):
        IdentityKey.generate().public.verify(signature, b"data")
    with pytest.raises(ProtocolError, match="64 bytes"):
        key.public.verify(signature[:-1], b"data")


def test_public_key_round_trips_through_base64(key: IdentityKey) -> None:
    again = PublicKey.from_b64(key.public.to_b64())
    assert again == key.public and again.key_id == key.key_id


@pytest.mark.parametrize("text", ["", "abc", "!!!!", base64.b64encode(b"x" * 31).decode(), "é"])
def test_bad_public_key_text_is_refused(text: str) -> None:
    with pytest.raises(ProtocolError):
        PublicKey.from_b64(text)


def test_passphrase_comes_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert passphrase_from_env(None) is None
    monkeypatch.setenv("POD_KEY_PW", "s3cret")
    assert passphrase_from_env("POD_KEY_PW") == b"s3cret"
    monkeypatch.delenv("POD_KEY_PW")
    with pytest.raises(KeyFileError, match="POD_KEY_PW .* not set"):
        passphrase_from_env("POD_KEY_PW")
