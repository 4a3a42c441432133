"""Pod-keys files: what `pod-agent keys show` prints loads back; every fault names the file and the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from pod_agent.errors import ModellerError
from pod_agent.modeller import load_pod_keys
from pod_agent.modeller.pinning import pin_line
from pod_agent.protocol import IdentityKey


def test_pin_lines_load_back_as_the_same_keys(tmp_path: Path) -> None:
    keys = {"hospital-a": IdentityKey.generate(), "bank.b": IdentityKey.generate()}
    path = tmp_path / "pods.toml"
    path.write_text("# from the pod owners\n" + "".join(pin_line(n, k.public.to_b64()) + "\n" for n, k in keys.items()))
    loaded = load_pod_keys(path)
    assert {n: k.key_id for n, k in loaded.items()} == {n: k.key_id for n, k in keys.items()}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('pod-a = "not base64!"', "pod-a: .*keys show"),
        ('pod-a = "QUJD"', "pod-a: .*32 bytes"),
        ("pod-a = 7", "pod-a must be a string"),
        ("pod-a = ", "is not TOML"),
        ("# nothing yet\n", "pins no pods"),
    ],
)
def test_a_bad_pod_keys_file_is_refused_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pods.toml"
    path.write_text(text)
    with pytest.raises(ModellerError, match=message) as refused:
        load_pod_keys(path)
    assert str(path) in str(refused.value)


def test_a_missing_pod_keys_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModellerError, match="No such file"):
        load_pod_keys(tmp_path / "absent.toml")
