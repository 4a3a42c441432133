"""One ModelRef builder: a modeller's task and a local fit pin a model file as a pod checks it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import pod_agent.modeller
from pod_agent.errors import ProtocolError
from pod_agent.policy import check_fetched_source
from pod_agent.protocol import model_from_file, spec_sha256
from pod_agent.protocol.messages import ModelRef

# "é" written decomposed (e + combining acute): the envelope normalises it to NFC, so a hash over the
# file's raw bytes would not be the hash the pod computes over the source it receives.
NFD_SOURCE = "class Net:\n    label = 'cafe\u0301'\n"


def test_the_modeller_and_a_local_fit_use_the_same_builder() -> None:
    assert pod_agent.modeller.model_from_file is model_from_file


def test_a_source_file_is_pinned_by_the_hash_the_pod_checks(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(NFD_SOURCE, encoding="utf-8")
    ref = model_from_file(path, style="module", class_name="Net")
    assert ref.name == "net" and ref.sha256 != hashlib.sha256(NFD_SOURCE.encode()).hexdigest()
    check_fetched_source(ref, NFD_SOURCE)  # raises TaskRefused(source_hash_mismatch) on a different hash


def test_a_spec_file_is_pinned_by_its_canonical_json_not_its_bytes(tmp_path: Path) -> None:
    text = '{ "layers": [ {"type": "ReLU"} ],\n  "head": {"units": 2, "activation": null} }\n'
    path = tmp_path / "spec.json"
    path.write_text(text, encoding="utf-8")
    ref = model_from_file(path, style="declarative", class_name=None, name="tiny")
    received = ModelRef.model_validate_json(ref.model_dump_json())  # what the pod parses off the wire
    assert received.spec is not None
    assert ref.sha256 == spec_sha256(received.spec) != hashlib.sha256(text.encode()).hexdigest()
    assert ref.name == "tiny"


def test_a_source_model_needs_its_class_name(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text(NFD_SOURCE, encoding="utf-8")
    with pytest.raises(ProtocolError, match=r"'lightning' needs the model's class name .*--class"):
        model_from_file(path, style="lightning", class_name=None)


def test_a_spec_that_is_not_a_json_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ProtocolError, match="is not a JSON object"):
        model_from_file(path, style="declarative", class_name=None)
